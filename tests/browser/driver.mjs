// Browser test driver: the official Flashphoner Web SDK in Debian's chromium (CDP) and firefox-esr
// (WebDriver BiDi), headless with fake camera and microphone, via puppeteer-core, against a running
// webcall server. Run by tests/browser/test_browsers.py; usable by hand too:
//
//   node tests/browser/driver.mjs --base http://127.0.0.1:8080 [--artifacts DIR] [--browsers chromium,firefox]
//                                 [--only basic,cross,demo] [--canvas chromium,firefox] [--ttff-count 10]
//                                 [--latency-ms 10000] [--latency-settle-ms 10000] [--ttff-gap-ms 0]
//
// The server must serve tests/browser/harness.{html,js} under /static/ (the pytest test does that with a
// temporary --static-dir). Each finished scenario prints one line to stdout:
//   RESULT {"browser": "...", "scenario": "...", "data": {...}}           (or "error": "...")
// The Python side asserts on them; this script only measures and never fails a check itself.

import fs from "node:fs";
import path from "node:path";
import {parseArgs} from "node:util";

import {launch} from "./browsers.mjs";

const {values: args} = parseArgs({
    options: {
        base: {type: "string"},
        artifacts: {type: "string", default: path.resolve("artifacts/browser")},
        browsers: {type: "string", default: "chromium,firefox"},
        only: {type: "string", default: "basic,cross,mse,demo"},
        "ttff-count": {type: "string", default: "10"},
        "latency-ms": {type: "string", default: "10000"},
        "latency-settle-ms": {type: "string", default: "10000"},
        // figures: a pause between two time-to-first-frame plays; longer than a feed's linger (3 s), every MSE /
        // WSPlayer play is then its stream's first (a cold feed) instead of joining the one the last play left
        "ttff-gap-ms": {type: "string", default: "0"},
        "bitrate-seconds": {type: "string", default: "15"},
        // Browsers whose main publication (the "basic" scenarios, bitrate included) is the canvas pattern rather
        // than the fake camera. Firefox's fake camera is one flat colour; Chromium's is so simple a picture that
        // its encoder spends only ~0.5 Mbit/s on it, so the bitrate figure would measure the picture.
        // Cross-browser and demo-page runs publish Chromium's fake camera.
        canvas: {type: "string", default: "chromium,firefox"},
    },
});
if (!args.base) {
    console.error("usage: driver.mjs --base http://127.0.0.1:PORT");
    process.exit(2);
}
const BASE = args.base.replace(/\/$/, "");
const WS_URL = BASE.replace(/^http/, "ws") + "/";
const ARTIFACTS = args.artifacts;
const BROWSERS = args.browsers.split(",").filter(Boolean);
const ONLY = new Set(args.only.split(",").filter(Boolean));
const TTFF_COUNT = Number(args["ttff-count"]);
const LATENCY_MS = Number(args["latency-ms"]);
const SETTLE_MS = Number(args["latency-settle-ms"]);
const TTFF_GAP_MS = Number(args["ttff-gap-ms"]);
const BITRATE_SECONDS = Number(args["bitrate-seconds"]);
const CANVAS = new Set(args.canvas.split(",").filter(Boolean));
fs.mkdirSync(ARTIFACTS, {recursive: true});

const T0 = Date.now();
function note(...parts) {
    process.stderr.write(`[driver +${((Date.now() - T0) / 1000).toFixed(1)}s] ${parts.join(" ")}\n`);
}

function emit(browser, scenario, payload) {
    process.stdout.write("RESULT " + JSON.stringify({browser, scenario, ...payload}) + "\n");
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// The server pings every 5 s (--ping-interval): a session probing every 5 s that misses 3 checks in a row is
// FAILED by the SDK, so PROBE_SECONDS of a session's life hold several checks with pings to pass them.
const PROBES = 3, PROBE_MS = 5000, PROBE_SECONDS = 21;

const consoleLogs = new Map();  // file -> lines
let currentStep = "setup";       // tags console warnings with the scenario step that was running

async function openHarness(browser, browserName, label, providers) {
    // A page of its own window: nothing runs as a throttled background tab.
    let page;
    try {
        page = await browser.newPage({type: "window"});
    } catch (e) {
        page = await browser.newPage();
    }
    const file = path.join(ARTIFACTS, `console-${browserName}.log`);
    if (!consoleLogs.has(file)) {
        consoleLogs.set(file, []);
    }
    const lines = consoleLogs.get(file);
    const warnings = [];
    page.on("console", (msg) => {
        const line = `${new Date().toISOString()} [${label}] ${msg.type()}: ${msg.text()}`;
        lines.push(line);
        if (msg.type() === "error" || msg.type() === "warn" || msg.type() === "warning") {
            warnings.push(`[${currentStep}] ${msg.type()}: ${msg.text()}`.slice(0, 500));
        }
    });
    page.on("pageerror", (err) => {
        lines.push(`${new Date().toISOString()} [${label}] pageerror: ${err.message}`);
        warnings.push(`[${currentStep}] pageerror: ${err.message}`.slice(0, 500));
    });
    page.__warnings = warnings;
    const extra = providers ? `&providers=${providers}` : "";
    await page.goto(`${BASE}/static/harness.html?server=${encodeURIComponent(WS_URL)}${extra}`, {waitUntil: "load"});
    page.__init = await page.evaluate(() => T.init());
    return page;
}

const call = (page, fn, ...a) => page.evaluate(fn, ...a);

const watchFrames = (page, key) => call(page, (k) => T.watchFrames(k, 3), key);

// The WSPlayer's audio callbacks, sampled a second apart until some new one is audible (up to `tries` times).
async function watchWsAudio(page, tries = 3) {
    let audio = null;
    for (let look = 1; look <= tries; look++) {
        audio = {...await call(page, () => T.wsAudioCheck(1000)), looks: look};
        if (audio.after.audible > audio.before.audible) {
            break;
        }
    }
    return audio;
}

function flushConsoleLogs() {
    for (const [file, lines] of consoleLogs) {
        fs.writeFileSync(file, lines.join("\n") + "\n");
    }
}

function uniq(prefix) {
    return `${prefix}-${Math.random().toString(36).slice(2, 8)}`;
}

// Runs one scenario step: emits its result (or the error) and never throws.
async function step(browserName, scenario, fn) {
    const started = Date.now();
    currentStep = scenario;
    try {
        const data = await fn();
        emit(browserName, scenario, {data, ms: Date.now() - started});
        return data;
    } catch (e) {
        note(`${browserName} ${scenario} error: ${e && e.stack || e}`);
        emit(browserName, scenario, {error: String(e && e.message || e), ms: Date.now() - started});
        return null;
    } finally {
        flushConsoleLogs();
    }
}

const percentile = (sorted, p) => sorted.length ?
    sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p / 100 * sorted.length) - 1))] : null;

// ------------------------------------------------------------------------------------------ scenarios

// Everything one browser does against itself: publisher page + player page.
async function basic(browser, browserName) {
    const canvas = CANVAS.has(browserName);
    const name = uniq(`basic-${browserName}`);
    const pub = await openHarness(browser, browserName, "publisher");
    const ply = await openHarness(browser, browserName, "player");
    emit(browserName, "init", {data: {publisher: pub.__init, player: ply.__init}});

    await call(pub, () => T.connect("pub"));
    await call(ply, () => T.connect("play"));
    // An idle session that probes for the server's pings (the SDK fails it after PROBES checks, PROBE_MS apart,
    // with nothing from the server between them); looked at once the rest of this scenario has run.
    await call(ply, (probes, ms) => T.connect("probe", {receiveProbes: probes, probesInterval: ms}), PROBES, PROBE_MS);
    const probeSince = Date.now();

    let publishedAt = null;
    const published = await step(browserName, "publish", async () => {
        await call(pub, (n, c) => T.publish("main", "pub", n, {canvas: c, width: 640, height: 480}), name, canvas);
        const st = await call(pub, () => T.waitStatus("main", ["PUBLISHING", "FAILED", "UNPUBLISHED"], 15000));
        publishedAt = Date.now();
        await call(pub, () => T.startBitrateSampler("main"));
        return {status: st.status, info: st.info, history: await call(pub, () => T.statuses("main").map((s) => s.status))};
    });
    if (!published || published.status !== "PUBLISHING") {
        return;  // nothing else can work; the Python side reports the publish failure
    }

    const played = await step(browserName, "play", async () => {
        await call(ply, (n) => T.play("p1", "play", n), name);
        const st = await call(ply, () => T.waitStatus("p1", ["PLAYING", "FAILED", "STOPPED"], 15000));
        return {status: st.status, info: st.info};
    });

    if (played && played.status === "PLAYING") {
        await step(browserName, "frames", async () => {
            await sleep(1500);
            return await watchFrames(ply, "p1");
        });
        await step(browserName, "play_stats", async () => {
            return await call(ply, () => T.stats("p1"));
        });
        await step(browserName, "quality", async () => {
            await sleep(5000);  // rate messages, one a second
            return {player: await call(ply, () => T.quality("p1")), publisher: await call(pub, () => T.quality("main"))};
        });
    }

    await step(browserName, "available", async () => {
        const live = await call(ply, (n) => T.available("play", n), name);
        const unknown = await call(ply, () => T.available("play", "no-such-stream-" + Date.now()));
        return {live, unknown};
    });

    await step(browserName, "send_data", async () => {
        return await call(ply, () => T.sendData("play", {hello: "webcall", n: 42}));
    });

    await step(browserName, "mute_event", async () => {
        const before = await call(ply, () => T.events("p1").length);
        const state = await call(pub, () => T.mute("main", "muteAudio"));
        const muted = await call(ply, (f) => T.waitEvent("p1", "audioMuted", 5000, f), before);
        await call(pub, () => T.mute("main", "unmuteAudio"));
        const unmuted = await call(ply, (f) => T.waitEvent("p1", "audioUnmuted", 5000, f), before);
        return {publisherState: state, muted, unmuted};
    });

    await step(browserName, "play_unknown", async () => {
        await call(ply, () => T.play("unknown", "play", "no-such-stream-xyz"));
        const st = await call(ply, () => T.waitStatus("unknown", ["FAILED", "PLAYING", "STOPPED"], 10000));
        return {status: st.status, info: st.info};
    });

    await step(browserName, "publish_duplicate", async () => {
        await call(ply, () => T.connect("dup"));
        await call(ply, (n, c) => T.publish("dup", "dup", n, {canvas: c, width: 320, height: 240}), name, canvas);
        const st = await call(ply, () => T.waitStatus("dup", ["FAILED", "PUBLISHING", "UNPUBLISHED"], 10000));
        const original = await call(pub, () => T.statuses("main").map((s) => s.status));
        await call(ply, () => T.disconnect("dup"));
        return {status: st.status, info: st.info, originalPublisher: original};
    });

    await step(browserName, "play_stop", async () => {
        await call(ply, () => T.stop("p1"));
        const st = await call(ply, () => T.waitStatus("p1", ["STOPPED", "FAILED"], 5000));
        return {status: st.status, info: st.info};
    });

    await step(browserName, "ttff", async () => {
        const plays = await call(ply, (n, k) => T.ttff("play", n, k), name, TTFF_COUNT);
        const values = plays.filter((p) => p.ok).map((p) => p.ttffMs).sort((a, b) => a - b);
        return {plays, okCount: values.length, count: plays.length, p50: percentile(values, 50),
            p95: percentile(values, 95), min: values[0] ?? null, max: values[values.length - 1] ?? null,
            method: plays[0] && plays[0].method};
    });

    await step(browserName, "publish_bitrate", async () => {
        const wait = publishedAt + BITRATE_SECONDS * 1000 + 1200 - Date.now();
        if (wait > 0) {
            await sleep(wait);
        }
        const samples = await call(pub, () => T.bitrateSamples("main"));
        return bitrateReport(samples, BITRATE_SECONDS);
    });

    // video mute reaches a second player, then the publisher unpublishes under it
    await call(ply, (n) => T.play("p2", "play", n), name);
    const p2 = await call(ply, () => T.waitStatus("p2", ["PLAYING", "FAILED", "STOPPED"], 15000));
    await step(browserName, "mute_video_event", async () => {
        if (p2.status !== "PLAYING") {
            return {playerStatus: p2.status, playerInfo: p2.info};
        }
        const state = await call(pub, () => T.mute("main", "muteVideo"));
        const muted = await call(ply, () => T.waitEvent("p2", "videoMuted", 5000));
        await call(pub, () => T.mute("main", "unmuteVideo"));
        const unmuted = await call(ply, () => T.waitEvent("p2", "videoUnmuted", 5000));
        return {playerStatus: p2.status, publisherState: state, muted, unmuted};
    });

    await step(browserName, "unpublish", async () => {
        await call(pub, () => T.stop("main"));
        const st = await call(pub, () => T.waitStatus("main", ["UNPUBLISHED", "FAILED"], 5000));
        const playerSt = await call(ply, () => T.waitStatus("p2", ["STOPPED", "FAILED"], 5000, 1));
        const after = await call(ply, (n) => T.available("play", n), name);
        return {status: st.status, info: st.info, player: {status: playerSt.status, info: playerSt.info},
            playerWasPlaying: p2.status === "PLAYING", availableAfter: after};
    });

    await step(browserName, "keepalive", async () => {
        const wait = probeSince + PROBE_SECONDS * 1000 - Date.now();
        if (wait > 0) {
            await sleep(wait);
        }
        const statuses = await call(ply, () => T.sessionStatuses("probe"));
        const seconds = (Date.now() - probeSince) / 1000;
        await call(ply, () => T.disconnect("probe"));
        return {statuses, seconds, probes: PROBES, probeMs: PROBE_MS};
    });

    emit(browserName, "console_warnings", {data: {publisher: pub.__warnings.slice(0, 40),
        player: ply.__warnings.slice(0, 40)}});
    await pub.close();
    await ply.close();
}

function bitrateReport(samples, seconds) {
    const ok = samples.filter((s) => typeof s.bytesSent === "number");
    if (ok.length < 2) {
        return {samples, error: "fewer than 2 stats samples"};
    }
    const t0 = ok[0].t;
    const rate = (a, b) => (b.bytesSent - a.bytesSent) * 8 / ((b.t - a.t) / 1000);
    // the sample nearest to `seconds` after publishing and the one ~2 s before it
    const end = ok.reduce((best, s) => Math.abs(s.t - t0 - seconds * 1000) < Math.abs(best.t - t0 - seconds * 1000) ? s : best);
    const start = ok.reduce((best, s) => Math.abs(s.t - (end.t - 2000)) < Math.abs(best.t - (end.t - 2000)) ? s : best);
    const perSecond = [];
    for (let i = 1; i < ok.length; i++) {
        perSecond.push({atS: Math.round((ok[i].t - t0) / 100) / 10, bps: Math.round(rate(ok[i - 1], ok[i])),
            w: ok[i].frameWidth, h: ok[i].frameHeight, fps: ok[i].fps, limitation: ok[i].limitation,
            targetBitrate: ok[i].targetBitrate, available: ok[i].available});
    }
    return {
        bpsAt: end !== start ? Math.round(rate(start, end)) : null,
        atSeconds: Math.round((end.t - t0) / 100) / 10,
        averageBps: Math.round(rate(ok[0], end)),
        frame: {w: end.frameWidth, h: end.frameHeight, fps: end.fps},
        limitation: end.limitation, encoder: end.encoder,
        perSecond,
    };
}

// Publish in one browser, play in the other.
async function cross(browsers, from, to) {
    const scenario = `cross_${from}_to_${to}`;
    await step(to, scenario, async () => {
        const name = uniq(`cross-${from}`);
        const pub = await openHarness(browsers[from], from, `cross-publisher-to-${to}`);
        const ply = await openHarness(browsers[to], to, `cross-player-from-${from}`);
        try {
            await call(pub, () => T.connect("pub"));
            await call(ply, () => T.connect("play"));
            await call(pub, (n, c) => T.publish("x", "pub", n, {canvas: c, width: 640, height: 480}), name,
                from === "firefox");
            const pst = await call(pub, () => T.waitStatus("x", ["PUBLISHING", "FAILED"], 15000));
            if (pst.status !== "PUBLISHING") {
                return {publisher: pst};
            }
            await call(ply, (n) => T.play("x", "play", n), name);
            const st = await call(ply, () => T.waitStatus("x", ["PLAYING", "FAILED", "STOPPED"], 15000));
            const out = {publisher: {status: pst.status}, player: {status: st.status, info: st.info}};
            if (st.status === "PLAYING") {
                await sleep(1500);
                out.frames = await watchFrames(ply, "x");
                out.stats = await call(ply, () => T.stats("x"));
            }
            await call(pub, () => T.stop("x"));
            out.unpublish = (await call(pub, () => T.waitStatus("x", ["UNPUBLISHED", "FAILED"], 5000))).status;
            out.playerAfter = (await call(ply, () => T.waitStatus("x", ["STOPPED", "FAILED"], 5000, 1))).status;
            return out;
        } finally {
            await pub.close();
            await ply.close();
        }
    });
}

// MSE players (spec §11.1) of a WebRTC publication, through the SDK's MediaSource provider: `from` publishes
// (VP8 by default: the server transcodes it; or H264 with VP8/VP9/AV1 stripped from its offer: re-framed), `to`
// plays with mediaProvider "MSE". What the viewer sees (moving pixels) and hears (decoded audio) is checked.
async function mse(browsers, from, to, h264) {
    const scenario = `mse_${from}${h264 ? "_h264" : ""}_to_${to}`;
    await step(to, scenario, async () => {
        const name = uniq(`mse-${from}`);
        const pub = await openHarness(browsers[from], from, `${scenario}-publisher`);
        const ply = await openHarness(browsers[to], to, `${scenario}-player`, "WebRTC,MSE");
        try {
            await call(pub, () => T.connect("pub"));
            await call(ply, () => T.connect("play"));
            await call(pub, (n, c, strip) => T.publish("x", "pub", n, {canvas: c, width: 640, height: 480,
                stripCodecs: strip}), name, true, h264 ? "VP8,VP9,AV1" : "");
            const pst = await call(pub, () => T.waitStatus("x", ["PUBLISHING", "FAILED"], 15000));
            if (pst.status !== "PUBLISHING") {
                return {publisher: pst};
            }
            const t0 = Date.now();
            await call(ply, (n) => T.play("x", "play", n, {mediaProvider: "MSE"}), name);
            const st = await call(ply, () => T.waitStatus("x", ["PLAYING", "FAILED", "STOPPED"], 15000));
            const out = {publisher: {status: pst.status}, player: {status: st.status, info: st.info},
                providers: ply.__init.providers};
            if (st.status === "PLAYING") {
                out.frames = await watchFrames(ply, "x");
                out.firstFrameMs = Date.now() - t0;  // upper bound: includes the frame checks' own 0.7 s each
                out.audio = await call(ply, () => T.audioCheck("x", 1000, 4000));
                // the server's view of this stream's shared feeds: is the video transcoded or re-framed?
                const listed = await (await fetch(`${BASE}/streams`)).json();
                out.feeds = (listed.find((s) => s.name === name) || {}).feeds;
            }
            out.warnings = ply.__warnings.slice(0, 10);
            await call(ply, () => T.stop("x"));
            out.playerStop = (await call(ply, () => T.waitStatus("x", ["STOPPED", "FAILED"], 5000, 1))).status;
            await call(pub, () => T.stop("x"));
            out.unpublish = (await call(pub, () => T.waitStatus("x", ["UNPUBLISHED", "FAILED"], 5000))).status;
            return out;
        } finally {
            await pub.close();
            await ply.close();
        }
    });
}

// README figures (not in the default run: `--only figures`): time to first frame per media provider, with one
// Chromium publisher (canvas pattern, VP8) and one Chromium player page allowing all three providers.
async function figures(browsers, count) {
    await step("chromium", "provider_ttff", async () => {
        const name = uniq("figures");
        const pub = await openHarness(browsers.chromium, "chromium", "figures-publisher");
        const ply = await openHarness(browsers.chromium, "chromium", "figures-player", "WebRTC,MSE,WSPlayer");
        try {
            await call(pub, () => T.connect("pub"));
            await call(ply, () => T.connect("play"));
            await call(pub, (n) => T.publish("x", "pub", n, {canvas: true, width: 640, height: 480}), name);
            await call(pub, () => T.waitStatus("x", ["PUBLISHING", "FAILED"], 15000));
            await sleep(2000);
            const out = {};
            for (const provider of ["WebRTC", "MSE", "WSPlayer"]) {
                out[provider] = [];
                for (let i = 0; i < count; i++) {  // one evaluate per play: each stays well under the CDP timeout
                    out[provider].push(...await call(ply, (n, p) => T.providerTtff("play", n, p, 1), name, provider));
                    await sleep(TTFF_GAP_MS);
                }
            }
            // Added latency per provider, read from the clock drawn into the published canvas: one play each,
            // from SETTLE_MS after its first readable picture (an MSE player catches up to the live edge in its
            // first ≈ 10 s: webcall/mse/catchup.py), for LATENCY_MS.
            out.latency = {};
            for (const provider of ["WebRTC", "MSE", "WSPlayer"]) {
                out.latency[provider] = await call(ply, (n, p, settle, ms) => T.providerLatency("play", n, p, settle,
                    ms), name, provider, SETTLE_MS, LATENCY_MS);
            }
            await call(pub, () => T.stop("x"));
            return out;
        } finally {
            await pub.close();
            await ply.close();
        }
    });
}

// WSPlayer (spec §11.2): the SDK's canvas player with its worker scripts from /sdk/; `from` publishes (VP8).
async function wsplayer(browsers, from, to) {
    const scenario = `wsplayer_${from}_to_${to}`;
    await step(to, scenario, async () => {
        const name = uniq(`wsp-${from}`);
        const pub = await openHarness(browsers[from], from, `${scenario}-publisher`);
        const ply = await openHarness(browsers[to], to, `${scenario}-player`, "WebRTC,WSPlayer");
        try {
            await call(pub, () => T.connect("pub"));
            await call(ply, () => T.connect("play"));
            await call(pub, (n) => T.publish("x", "pub", n, {canvas: true, width: 640, height: 480}), name);
            const pst = await call(pub, () => T.waitStatus("x", ["PUBLISHING", "FAILED"], 15000));
            if (pst.status !== "PUBLISHING") {
                return {publisher: pst};
            }
            await call(ply, (n) => T.play("x", "play", n, {mediaProvider: "WSPlayer"}), name);
            const st = await call(ply, () => T.waitStatus("x", ["PLAYING", "FAILED", "STOPPED"], 15000));
            const out = {publisher: {status: pst.status}, player: {status: st.status, info: st.info},
                providers: ply.__init.providers};
            if (st.status === "PLAYING") {
                out.frames = await watchFrames(ply, "x");
                out.audio = await watchWsAudio(ply);
                const listed = await (await fetch(`${BASE}/streams`)).json();
                out.feeds = (listed.find((s) => s.name === name) || {}).feeds;
            }
            out.warnings = ply.__warnings.slice(0, 10);
            await call(ply, () => T.stop("x"));
            out.playerStop = (await call(ply, () => T.waitStatus("x", ["STOPPED", "FAILED"], 5000, 1))).status;
            await call(pub, () => T.stop("x"));
            out.unpublish = (await call(pub, () => T.waitStatus("x", ["UNPUBLISHED", "FAILED"], 5000))).status;
            return out;
        } finally {
            await pub.close();
            await ply.close();
        }
    });
}

// The real demo page (index.html at /): publish and play through its buttons, then a screenshot.
async function demo(browser, browserName, provider) {
    // provider: the demo's ?mediaProvider= for its play panel (MSE / WSPlayer); publishing stays WebRTC
    await step(browserName, provider ? `demo_page_${provider}` : "demo_page", async () => {
        const name = uniq(`demo-${browserName}`);
        let page;
        try {
            page = await browser.newPage({type: "window"});
        } catch (e) {
            page = await browser.newPage();
        }
        const lines = [];
        page.on("console", (msg) => lines.push(`${msg.type()}: ${msg.text()}` +
            (msg.type() === "error" && msg.location() && msg.location().url ? ` (${msg.location().url})` : "")));
        page.on("pageerror", (err) => lines.push(`pageerror: ${err.message}`));
        try {
            await page.setViewport({width: 1280, height: 900});
            await page.goto(`${BASE}/?stream=${name}${provider ? "&mediaProvider=" + provider : ""}`,
                {waitUntil: "load"});
            const text = (id) => page.$eval(id, (el) => el.textContent.trim());
            const waitText = async (id, wanted, ms) => {
                const deadline = Date.now() + ms;
                let last = null;
                while (Date.now() < deadline) {
                    last = await text(id);
                    if (wanted.includes(last)) {
                        return last;
                    }
                    await sleep(100);
                }
                return last;
            };
            const session = await waitText("#sessionStatus", ["ESTABLISHED"], 10000);
            await page.click("#publishBtn");
            const publish = await waitText("#publishStatus", ["PUBLISHING", "FAILED"], 15000);
            await page.click("#playBtn");
            const play = await waitText("#playStatus", ["PLAYING", "FAILED"], 15000);
            await sleep(3000);  // let the stats lines fill in
            const file = path.join(ARTIFACTS, `demo-index-${browserName}${provider ? "-" + provider : ""}.png`);
            await page.screenshot({path: file});
            const shown = {
                publishStats: await text("#publishStats"), playStats: await text("#playStats"),
                playInfo: await text("#playInfo"), notice: await page.$eval("#notice", (el) => el.hidden ? "" : el.textContent),
                remoteVideo: await page.$eval("#remoteDisplay", (d) => {
                    const v = d.querySelector("video");
                    return v ? {w: v.videoWidth, h: v.videoHeight, paused: v.paused} : null;
                }),
            };
            await page.click("#publishBtn");  // Stop
            const stopped = await waitText("#publishStatus", ["UNPUBLISHED", "FAILED"], 8000);
            const playAfter = await waitText("#playStatus", ["STOPPED", "FAILED"], 8000);
            return {session, publish, play, screenshot: file, ...shown, stopped, playAfter,
                console: lines.filter((l) => /^(error|warn|pageerror)/.test(l)).slice(0, 20)};
        } finally {
            fs.writeFileSync(path.join(ARTIFACTS, `console-${browserName}-demo.log`), lines.join("\n") + "\n");
            await page.close();
        }
    });
}

// ------------------------------------------------------------------------------------------ main

async function main() {
    const browsers = {};
    let exitCode = 0;
    try {
        for (const name of BROWSERS) {
            const t = Date.now();
            try {
                browsers[name] = await launch(name);
                emit(name, "launch", {data: {version: await browsers[name].version(), ms: Date.now() - t}});
            } catch (e) {
                emit(name, "launch", {error: String(e && e.message || e)});
                exitCode = 1;
            }
        }
        const live = BROWSERS.filter((b) => browsers[b]);
        for (const name of live) {
            if (ONLY.has("basic")) {
                note(`${name}: basic`);
                await basic(browsers[name], name).catch((e) => {
                    emit(name, "basic", {error: String(e && e.stack || e)});
                });
            }
        }
        if (ONLY.has("cross") && live.length === 2) {
            note("cross");
            await cross(browsers, live[0], live[1]);
            await cross(browsers, live[1], live[0]);
        }
        if (ONLY.has("mse") && browsers.chromium) {
            note("mse");
            await mse(browsers, "chromium", "chromium", true);
            await mse(browsers, "chromium", "chromium", false);
            await wsplayer(browsers, "chromium", "chromium");
            if (browsers.firefox) {
                await mse(browsers, "firefox", "chromium", false);
                await mse(browsers, "chromium", "firefox", false);
            }
        }
        if (ONLY.has("figures") && browsers.chromium) {
            note("figures");
            await figures(browsers, TTFF_COUNT);
        }
        if (ONLY.has("demo")) {
            for (const name of live) {
                note(`${name}: demo page`);
                await demo(browsers[name], name);
                if (name === "chromium") {
                    await demo(browsers[name], name, "MSE");
                }
            }
        }
    } finally {
        flushConsoleLogs();
        for (const b of Object.values(browsers)) {
            await b.close().catch(() => {});
            b.__cleanup();
        }
    }
    emit("all", "done", {data: {seconds: (Date.now() - T0) / 1000}});
    return exitCode;
}

main().then((code) => process.exit(code), (e) => {
    console.error(e);
    process.exit(1);
});
