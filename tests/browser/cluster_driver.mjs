// The cluster in a browser: the official Web SDK publishes on node A and plays the stream on node B (pulled
// from A over the relay between nodes), in Debian's chromium. Run by tests/browser/test_cluster_browser.py:
//
//   node tests/browser/cluster_driver.mjs --pub http://127.0.0.1:PORT_A --play http://127.0.0.1:PORT_B
//
// Both nodes serve tests/browser/harness.{html,js} under /static/. Prints one line:
//   RESULT {"publish": {...}, "play": {...}, "frames": {...}}     (or {"error": "..."})

import {parseArgs} from "node:util";

import {launch} from "./browsers.mjs";

const {values: args} = parseArgs({options: {pub: {type: "string"}, play: {type: "string"}}});
const ws = (base) => base.replace(/^http/, "ws").replace(/\/$/, "") + "/";

async function harness(browser, base) {
    const page = await browser.newPage();
    page.on("console", (msg) => process.stderr.write(`[${base}] ${msg.type()}: ${msg.text()}\n`));
    await page.goto(`${base}/static/harness.html?server=${encodeURIComponent(ws(base))}`, {waitUntil: "load"});
    await page.evaluate(() => T.init());
    return page;
}

const browser = await launch("chromium");
const out = {};
try {
    const name = `cluster-${Math.random().toString(36).slice(2, 8)}`;
    const pub = await harness(browser, args.pub);
    const ply = await harness(browser, args.play);
    await pub.evaluate(() => T.connect("pub"));
    await ply.evaluate(() => T.connect("play"));
    await pub.evaluate((n) => T.publish("main", "pub", n, {canvas: true, width: 640, height: 480}), name);
    out.publish = await pub.evaluate(() => T.waitStatus("main", ["PUBLISHING", "FAILED", "UNPUBLISHED"], 15000));
    await ply.evaluate((n) => T.play("p1", "play", n), name);
    out.play = await ply.evaluate(() => T.waitStatus("p1", ["PLAYING", "FAILED", "STOPPED"], 15000));
    out.frames = await ply.evaluate(() => T.watchFrames("p1", 3));
    await ply.evaluate(() => T.stop("p1"));
    await pub.evaluate(() => T.stop("main"));
    await ply.evaluate(() => T.disconnect("play"));
    await pub.evaluate(() => T.disconnect("pub"));
} catch (e) {
    out.error = String(e && e.stack || e);
} finally {
    await browser.close();
    browser.__cleanup();
}
process.stdout.write("RESULT " + JSON.stringify(out) + "\n");
