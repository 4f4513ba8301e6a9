// WebRTC media over ICE-TCP in Chromium, through the official SDK (tests/browser/harness.js):
//
//   sdk_tcp      the SDK's `transport: "TCP"` for publish and play: the server announces only TCP candidates
//   udp_blocked  default transport against a server (--blocked-base) whose announced UDP candidate is a black
//                hole, as behind a firewall that drops UDP: the browser tries UDP first and must fall back to TCP
//
//   firefox_sdk_tcp  sdk_tcp in Firefox (its own ICE-TCP implementation)
//
//   node tests/browser/ice_tcp_driver.mjs --base http://127.0.0.1:PORT --blocked-base http://127.0.0.1:PORT2
//
// Prints one RESULT line per scenario (publish/play statuses, what the player renders, the selected candidate
// pair of each side); the Python side asserts.

import fs from "node:fs";
import path from "node:path";
import {parseArgs} from "node:util";

import {launch} from "./browsers.mjs";

const {values: args} = parseArgs({
    options: {
        base: {type: "string"},
        "blocked-base": {type: "string"},
        artifacts: {type: "string", default: path.resolve("artifacts/browser-ice-tcp")},
    },
});
fs.mkdirSync(args.artifacts, {recursive: true});
const emit = (scenario, payload) => process.stdout.write("RESULT " + JSON.stringify({scenario, ...payload}) + "\n");
const note = (...parts) => process.stderr.write(`[ice-tcp] ${parts.join(" ")}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function openHarness(browser, label, base) {
    const BASE = base.replace(/\/$/, "");
    const WS_URL = BASE.replace(/^http/, "ws");
    let page;
    try {  // a window each: a background tab's timers (the canvas publisher's) are throttled
        page = await browser.newPage({type: "window"});
    } catch (e) {
        page = await browser.newPage();
    }
    const lines = [];
    page.on("console", (msg) => lines.push(`${msg.type()}: ${msg.text()}`.slice(0, 1000)));
    page.on("pageerror", (err) => lines.push(`pageerror: ${err.message}`));
    page.__save = () => fs.writeFileSync(path.join(args.artifacts, `console-${label}.log`), lines.join("\n") + "\n");
    await page.goto(`${BASE}/static/harness.html?server=${encodeURIComponent(WS_URL)}`, {waitUntil: "load"});
    await page.evaluate(() => T.init());
    return page;
}

async function scenario(name, base, transport, browserName = "chromium") {
    const browser = await launch(browserName);
    const stream = `ice-tcp-${name}-${Math.random().toString(36).slice(2, 8)}`;
    const pages = [];
    try {
        const pub = await openHarness(browser, `${name}-publisher`, base);
        const play = await openHarness(browser, `${name}-player`, base);
        pages.push(pub, play);
        await pub.evaluate(() => T.connect("s"));
        await play.evaluate(() => T.connect("s"));
        // Firefox publishes the harness's canvas pattern, as in driver.mjs (its fake camera is not reliable headless)
        const canvas = browserName === "firefox";
        await pub.evaluate((n, t, c) => T.publish("p", "s", n, {transport: t, canvas: c}), stream, transport, canvas);
        const published = await pub.evaluate(() => T.waitStatus("p", ["PUBLISHING", "FAILED"], 15000));
        await play.evaluate((n, t) => T.play("v", "s", n, {transport: t}), stream, transport);
        const playing = await play.evaluate(() => T.waitStatus("v", ["PLAYING", "FAILED"], 15000));
        await sleep(2500);  // a few seconds of video, past the first keyframe
        const frames = await play.evaluate(() => T.watchFrames("v", 3));
        const stats = (page, key) => page.evaluate((k) => T.stats(k), key).catch((e) => ({error: String(e)}));
        const pubStats = await stats(pub, "p");
        const playStats = await stats(play, "v");
        await play.evaluate(() => T.stop("v"));
        await pub.evaluate(() => T.stop("p"));
        await sleep(500);
        emit(name, {data: {published: published.status, publishedInfo: published.info, playing: playing.status,
            playingInfo: playing.info, frames, publisherPair: pubStats.pair, playerPair: playStats.pair,
            statsErrors: [pubStats.error, playStats.error].filter(Boolean),
            inbound: (playStats.inbound || {}).video || null, outbound: (pubStats.outbound || {}).video || null}});
    } catch (e) {
        note(`${name} error: ${e && e.stack || e}`);
        emit(name, {error: String(e && e.message || e)});
    } finally {
        for (const page of pages) {
            page.__save();
            await page.close().catch(() => {});
        }
        await browser.close().catch(() => {});
        browser.__cleanup && browser.__cleanup();
    }
}

await scenario("sdk_tcp", args.base, "TCP");
await scenario("udp_blocked", args["blocked-base"], undefined);
await scenario("firefox_sdk_tcp", args.base, "TCP", "firefox");
process.exit(0);
