// Every client against webcall, in real browsers (see browsers.mjs): the vendor's own example pages from
// @flashphoner/websdk (served unchanged under /static/websdk/ by tests/browser/test_clients.py) driven through
// their buttons in Chromium and Firefox, and the published WHIP/WHEP browser clients (whip.html) in Chromium.
//
//   node tests/browser/clients_driver.mjs --base http://127.0.0.1:PORT [--artifacts DIR] [--browsers chromium,firefox]
//
// Prints one RESULT line per scenario, as driver.mjs does; the Python side asserts.

import fs from "node:fs";
import path from "node:path";
import {parseArgs} from "node:util";

import {launch} from "./browsers.mjs";

const {values: args} = parseArgs({
    options: {
        base: {type: "string"},
        artifacts: {type: "string", default: path.resolve("artifacts/browser-clients")},
        browsers: {type: "string", default: "chromium,firefox"},
        only: {type: "string", default: "two_way,snapshot,recording,diagnostic,whip"},
    },
});
if (!args.base) {
    console.error("usage: clients_driver.mjs --base http://127.0.0.1:PORT");
    process.exit(2);
}
const BASE = args.base.replace(/\/$/, "");
const WS = BASE.replace(/^http/, "ws");
const DEMO = `${BASE}/static/websdk/examples/demo/streaming`;
const ARTIFACTS = args.artifacts;
const BROWSERS = args.browsers.split(",").filter(Boolean);
const ONLY = new Set(args.only.split(",").filter(Boolean));
fs.mkdirSync(ARTIFACTS, {recursive: true});

const T0 = Date.now();
const note = (...parts) =>
    process.stderr.write(`[clients +${((Date.now() - T0) / 1000).toFixed(1)}s] ${parts.join(" ")}\n`);
const emit = (browser, scenario, payload) =>
    process.stdout.write("RESULT " + JSON.stringify({browser, scenario, ...payload}) + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const uniq = (prefix) => `${prefix}-${Math.random().toString(36).slice(2, 8)}`;

async function step(browserName, scenario, fn) {
    const started = Date.now();
    try {
        const data = await fn();
        emit(browserName, scenario, {data, ms: Date.now() - started});
        return data;
    } catch (e) {
        note(`${browserName} ${scenario} error: ${e && e.stack || e}`);
        emit(browserName, scenario, {error: String(e && e.message || e), ms: Date.now() - started});
        return null;
    }
}

async function open(browser, browserName, label, url) {
    let page;
    try {
        page = await browser.newPage({type: "window"});
    } catch (e) {
        page = await browser.newPage();
    }
    const lines = [];
    page.on("console", (msg) => lines.push(`${msg.type()}: ${msg.text()}`.slice(0, 1000)));
    page.on("pageerror", (err) => lines.push(`pageerror: ${err.message}`));
    page.on("response", (r) => {
        if (r.status() >= 400) {
            lines.push(`http ${r.status()} ${r.request().method()} ${r.url()}`);
        }
    });
    const pending = new Set();
    page.on("request", (r) => pending.add(r.url()));
    page.on("requestfinished", (r) => pending.delete(r.url()));
    page.on("requestfailed", (r) => pending.delete(r.url()));
    page.__lines = lines;
    page.__log = path.join(ARTIFACTS, `console-${browserName}-${label}.log`);
    await page.setViewport({width: 1280, height: 900});
    try {
        await page.goto(url, {waitUntil: "load"});
    } catch (e) {
        // Seen once in CI on a cold clone: the first page of a fresh Chromium never reached "load". Say what
        // it was still waiting for, then reload once, as a user would.
        const waiting = `still pending: ${[...pending].join(" ") || "nothing"}`;
        note(`${browserName} ${label}: ${e.message}; ${waiting}; reloading`);
        lines.push(`navigation failed (${e.message}); ${waiting}`);
        try {
            await page.goto(url, {waitUntil: "load"});
        } catch (again) {
            await close(page);
            throw new Error(`${again.message} twice; ${waiting}`);
        }
    }
    return page;
}

async function close(page) {
    fs.writeFileSync(page.__log, page.__lines.join("\n") + "\n");
    await page.close().catch(() => {});
}

const pageErrors = (page) => page.__lines.filter((l) => l.startsWith("pageerror")).slice(0, 10);
const text = (page, sel) => page.$eval(sel, (el) => el.textContent.trim());

async function waitText(page, sel, wanted, ms) {
    const deadline = Date.now() + ms;
    let last = null;
    while (Date.now() < deadline) {
        last = await text(page, sel);
        if (wanted.some((w) => (w instanceof RegExp ? w.test(last) : w === last))) {
            return last;
        }
        await sleep(100);
    }
    return last;
}

// The page's own field, as a user would fill it: select what is there and type over it.
async function fill(page, sel, value) {
    await page.click(sel, {clickCount: 3});
    await page.$eval(sel, (el) => { el.value = ""; });
    await page.type(sel, value);
}

async function clickEnabled(page, sel, ms = 10000) {
    await page.waitForFunction((s) => { const b = document.querySelector(s); return b && !b.disabled; },
        {timeout: ms, polling: 100}, sel);
    await page.click(sel);
}

// Samples the playing <video> under `sel` twice (gap ms apart) on a 160x120 canvas: size, luma spread, and how
// much of the picture changed (luma and colour, since Firefox's fake camera is one flat colour that cycles).
// A still pair is sampled again, up to `tries` windows: one frozen moment on a loaded machine is not a still
// picture, a still picture is still in every window. The result is the window that changed most, with all of
// them under `windows`, each with the frames the element presented in it (Chromium; Firefox counts none for a
// MediaStream).
function frameCheck(sel, gap, tries) {
    const videos = Array.from(document.querySelectorAll(sel)).filter((v) => v.srcObject || v.src);
    const video = videos.find((v) => v.videoWidth > 0) || videos[0];
    if (!video) {
        return {error: "no <video> at " + sel};
    }
    const grab = () => {
        const c = document.createElement("canvas");
        c.width = 160; c.height = 120;
        const ctx = c.getContext("2d", {willReadFrequently: true});
        ctx.drawImage(video, 0, 0, 160, 120);
        return ctx.getImageData(0, 0, 160, 120).data;
    };
    const presented = () => (video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality().totalVideoFrames : null);
    const wait = (cond, ms) => new Promise((resolve) => {
        const end = Date.now() + ms;
        const tick = () => (cond() || Date.now() > end) ? resolve() : setTimeout(tick, 50);
        tick();
    });
    const compare = (a, b) => {
        let lumaDiff = 0, colourDiff = 0, changed = 0, sum = 0, sumSq = 0;
        const n = a.length / 4;
        for (let i = 0; i < a.length; i += 4) {
            const la = 0.299 * a[i] + 0.587 * a[i + 1] + 0.114 * a[i + 2];
            const lb = 0.299 * b[i] + 0.587 * b[i + 1] + 0.114 * b[i + 2];
            const cd = (Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2])) / 3;
            lumaDiff += Math.abs(la - lb);
            colourDiff += cd;
            if (cd > 16) {
                changed++;
            }
            sum += lb;
            sumSq += lb * lb;
        }
        const mean = sum / n;
        return {meanAbsDiff: lumaDiff / n, colourDiff: colourDiff / n, changedFraction: changed / n,
            meanLuma: mean, stdLuma: Math.sqrt(Math.max(0, sumSq / n - mean * mean))};
    };
    return wait(() => video.videoWidth > 0 && video.readyState >= 2, 5000).then(async () => {
        if (!(video.videoWidth > 0)) {
            return {error: "no video dimensions", readyState: video.readyState};
        }
        const windows = [];
        let best = null;
        for (let i = 0; i < tries; i++) {
            const t0 = video.currentTime, f0 = presented();
            const a = grab();
            await new Promise((r) => setTimeout(r, gap));
            const w = {...compare(a, grab()), advanced: video.currentTime - t0,
                presentedFrames: f0 === null ? null : presented() - f0};
            windows.push(w);
            if (!best || w.colourDiff + w.meanAbsDiff > best.colourDiff + best.meanAbsDiff) {
                best = w;
            }
            if (w.colourDiff > 1.5) {
                break;  // it moves, by well over what the test asks
            }
        }
        return {videoWidth: video.videoWidth, videoHeight: video.videoHeight, paused: video.paused, ...best, windows};
    });
}

const frames = (page, sel) => page.evaluate(frameCheck, sel, 700, 4);

// ------------------------------------------------------------------------------------------ vendor pages

// Two Way Streaming: connect, publish, play back; then the Player page plays the same stream.
async function twoWay(browser, b) {
    await step(b, "vendor_two_way", async () => {
        const page = await open(browser, b, "two_way", `${DEMO}/two_way_streaming/two_way_streaming.html`);
        const out = {};
        try {
            await fill(page, "#urlServer", WS);
            await clickEnabled(page, "#connectBtn");
            out.connect = await waitText(page, "#connectStatus", ["ESTABLISHED", "FAILED", "DISCONNECTED"], 10000);
            const name = await page.$eval("#publishStream", (el) => el.value);
            out.name = name;
            await clickEnabled(page, "#publishBtn");
            out.publish = await waitText(page, "#publishStatus", ["PUBLISHING", "FAILED"], 15000);
            out.publishInfo = await text(page, "#publishInfo");
            await clickEnabled(page, "#playBtn");
            out.play = await waitText(page, "#playStatus", ["PLAYING", "FAILED"], 15000);
            out.playInfo = await text(page, "#playInfo");
            if (out.play === "PLAYING") {
                await sleep(1000);
                out.frames = await frames(page, "#remoteVideo video");
                await page.screenshot({path: path.join(ARTIFACTS, `two_way-${b}.png`)});
            }
            if (out.publish === "PUBLISHING") {
                out.player = await playerPage(browser, b, name, "player");
            }
            if (out.play === "PLAYING") {
                await clickEnabled(page, "#playBtn");  // Stop
                out.stopPlay = await waitText(page, "#playStatus", ["STOPPED", "FAILED"], 8000);
            }
            if (out.publish === "PUBLISHING") {
                await clickEnabled(page, "#publishBtn");  // Stop
                out.unpublish = await waitText(page, "#publishStatus", ["UNPUBLISHED", "FAILED"], 8000);
            }
            await clickEnabled(page, "#connectBtn");  // Disconnect
            out.disconnect = await waitText(page, "#connectStatus", ["DISCONNECTED", "FAILED"], 8000);
            out.pageErrors = pageErrors(page);
            return out;
        } finally {
            await close(page);
        }
    });
}

// The Player page on `name`: its streamName query parameter, the server URL typed into its field, Start.
async function playerPage(browser, b, name, label) {
    const page = await open(browser, b, label, `${DEMO}/player/player.html?streamName=${encodeURIComponent(name)}`);
    const out = {};
    try {
        await fill(page, "#url", WS);
        out.streamNameField = await page.$eval("#streamName", (el) => el.value);
        await clickEnabled(page, "#playBtn");
        out.status = await waitText(page, "#status", ["PLAYING", "FAILED", "STOPPED"], 15000);
        out.info = await text(page, "#info");
        if (out.status === "PLAYING") {
            await sleep(1000);
            out.frames = await frames(page, "#remoteVideo video");
            await page.screenshot({path: path.join(ARTIFACTS, `${label}-${b}.png`)});
            await clickEnabled(page, "#playBtn");  // Stop
            out.stop = await waitText(page, "#status", ["STOPPED", "FAILED"], 8000);
        }
        out.pageErrors = pageErrors(page);
        return out;
    } finally {
        await close(page);
    }
}

// Pages whose URL field carries the stream name: ws://host:port/<name>.
async function startWithUrl(page, name) {
    await fill(page, "#url", `${WS}/${name}`);
    await clickEnabled(page, "#publishBtn");
    return await waitText(page, "#status", ["PUBLISHING", "FAILED", "DISCONNECTED"], 15000);
}

async function snapshot(browser, b) {
    await step(b, "vendor_snapshot", async () => {
        const page = await open(browser, b, "snapshot", `${DEMO}/stream-snapshot/stream-snapshot.html`);
        const out = {};
        try {
            out.publish = await startWithUrl(page, uniq(`snap-${b}`));
            if (out.publish === "PUBLISHING") {
                await sleep(500);
                await clickEnabled(page, "#snapshotBtn");
                await page.waitForFunction(() => {
                    const img = document.getElementById("dynImg");
                    return (img.src && img.complete && img.naturalWidth > 0) ||
                        document.getElementById("snapshotStatus").textContent.trim() === "FAILED";
                }, {timeout: 10000, polling: 100}).catch(() => {});
                out.snapshotStatus = await text(page, "#snapshotStatus");
                out.image = await page.$eval("#dynImg", (img) => ({w: img.naturalWidth, h: img.naturalHeight,
                    png: img.src.startsWith("data:image/png;base64,"), bytes: Math.round(img.src.length * 3 / 4)}));
                await page.screenshot({path: path.join(ARTIFACTS, `snapshot-${b}.png`)});
                await clickEnabled(page, "#publishBtn");  // Stop
                out.unpublish = await waitText(page, "#status", ["UNPUBLISHED", "FAILED"], 8000);
            }
            out.pageErrors = pageErrors(page);
            return out;
        } finally {
            await close(page);
        }
    });
}

async function recording(browser, b) {
    await step(b, "vendor_recording", async () => {
        const page = await open(browser, b, "recording", `${DEMO}/stream_recording/recording.html`);
        const out = {};
        try {
            out.publish = await startWithUrl(page, uniq(`rec-${b}`));
            if (out.publish === "PUBLISHING") {
                await sleep(2500);
                await clickEnabled(page, "#publishBtn");  // Stop
                out.unpublish = await waitText(page, "#status", ["UNPUBLISHED", "FAILED"], 10000);
                await page.waitForFunction(() => document.getElementById("downloadDiv").style.display !== "none" &&
                    document.getElementById("link").getAttribute("href") !== "#", {timeout: 10000, polling: 100})
                    .catch(() => {});
                out.link = await page.$eval("#link", (a) => ({href: a.href, visible: a.offsetParent !== null}));
                out.download = await page.evaluate(async (href) => {
                    const r = await fetch(href, {cache: "no-store"});
                    const body = await r.arrayBuffer();
                    return {status: r.status, type: r.headers.get("content-type"), bytes: body.byteLength};
                }, out.link.href);
                // the page's own <video> on the record
                await page.waitForFunction(() => document.getElementById("recVideo").readyState >= 1 ||
                    document.getElementById("recVideo").error, {timeout: 8000, polling: 100}).catch(() => {});
                out.recVideo = await page.$eval("#recVideo", (v) => ({readyState: v.readyState, duration: v.duration,
                    w: v.videoWidth, h: v.videoHeight, error: v.error ? v.error.code + " " + v.error.message : null}));
                await page.screenshot({path: path.join(ARTIFACTS, `recording-${b}.png`)});
            }
            out.pageErrors = pageErrors(page);
            return out;
        } finally {
            await close(page);
        }
    });
}

async function diagnostic(browser, b) {
    await step(b, "vendor_diagnostic", async () => {
        const page = await open(browser, b, "diagnostic", `${DEMO}/stream-diagnostic/stream-diagnostic.html`);
        const out = {};
        try {
            out.publish = await startWithUrl(page, uniq(`diag-${b}`));
            if (out.publish === "PUBLISHING") {
                out.preview = await waitText(page, "#debug", [/PLAYING/, /FAILED/], 15000);
                out.preview = /PLAYING/.test(out.preview) ? "PLAYING" : out.preview.slice(-300);
                if (out.preview === "PLAYING") {
                    await sleep(1000);
                    out.frames = await frames(page, "#remoteVideo video");
                }
                await clickEnabled(page, "#publishBtn");  // Stop
                out.unpublish = await waitText(page, "#status", ["UNPUBLISHED", "FAILED"], 8000);
                out.log = (await text(page, "#debug")).slice(-600);
            }
            out.pageErrors = pageErrors(page);
            return out;
        } finally {
            await close(page);
        }
    });
}

// ------------------------------------------------------------------------------------------ WHIP / WHEP

// Chromium publishes with @eyevinn/whip-web-client and plays with whip-whep; the vendor Player page then
// plays the WHIP publication in every browser.
async function whip(browsers, b) {
    await step(b, "whip_whep", async () => {
        const name = uniq(`whip-${b}`);
        const page = await open(browsers[b], b, "whip", `${BASE}/static/whip.html`);
        const out = {name};
        try {
            out.publish = await page.evaluate((n) => W.publish(n), name);
            out.play = await page.evaluate((n) => W.play(n), name);
            await sleep(1000);
            out.frames = await frames(page, "#remote");
            await page.screenshot({path: path.join(ARTIFACTS, `whip-${b}.png`)});
            out.vendorPlayer = {};
            for (const other of Object.keys(browsers)) {
                out.vendorPlayer[other] = await playerPage(browsers[other], other, name, `player-whip-from-${b}`)
                    .catch((e) => ({error: String(e && e.message || e)}));
            }
            out.stopPlay = await page.evaluate(() => W.stopPlay());
            out.stopPublish = await page.evaluate(() => W.stopPublish());
            out.pageErrors = pageErrors(page);
            out.consoleErrors = page.__lines.filter((l) => l.startsWith("error")).slice(0, 10);
            out.httpErrors = page.__lines.filter((l) => l.startsWith("http ")).slice(0, 10);
            return out;
        } finally {
            await close(page);
        }
    });
}

// ------------------------------------------------------------------------------------------ main

async function main() {
    const browsers = {};
    let exitCode = 0;
    try {
        // Both browsers start, and then go through the vendor pages, side by side: most of each scenario is
        // waiting (ICE, DTLS, the recording's seconds, the frame samples), so this halves the run.
        await Promise.all(BROWSERS.map(async (name) => {
            const t = Date.now();
            try {
                browsers[name] = await launch(name);
                emit(name, "launch", {data: {version: await browsers[name].version(), ms: Date.now() - t}});
            } catch (e) {
                emit(name, "launch", {error: String(e && e.message || e)});
                exitCode = 1;
            }
        }));
        await Promise.all(Object.keys(browsers).map(async (name) => {
            const br = browsers[name];
            if (ONLY.has("two_way")) { note(`${name}: two way + player`); await twoWay(br, name); }
            if (ONLY.has("snapshot")) { note(`${name}: snapshot`); await snapshot(br, name); }
            if (ONLY.has("recording")) { note(`${name}: recording`); await recording(br, name); }
            if (ONLY.has("diagnostic")) { note(`${name}: diagnostic`); await diagnostic(br, name); }
        }));
        if (ONLY.has("whip") && browsers.chromium) {
            note("chromium: whip/whep");
            await whip(browsers, "chromium");
        }
    } finally {
        for (const br of Object.values(browsers)) {
            await br.close().catch(() => {});
            br.__cleanup();
        }
    }
    emit("all", "done", {data: {seconds: (Date.now() - T0) / 1000}});
    return exitCode;
}

main().then((code) => process.exit(code), (e) => {
    console.error(e);
    process.exit(1);
});
