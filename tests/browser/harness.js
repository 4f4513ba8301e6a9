/*
 * Browser-side half of the browser tests: a thin layer over the official Flashphoner Web SDK
 * (loaded from the server's /sdk/flashphoner.js) that tests/browser/driver.mjs calls through
 * page.evaluate(). Everything here returns plain JSON-able data.
 *
 *   harness.html?server=ws://127.0.0.1:PORT/   (default: this page's host)
 *
 * Sessions and streams are named by keys the driver chooses; every SDK status and stream event
 * is recorded with a timestamp, and the wait* helpers poll those records.
 */
(function () {
    "use strict";

    var params = new URLSearchParams(location.search);

    // WSPlayer (spec §11.2) draws into a WebGL canvas and plays audio through a ScriptProcessor: keep the
    // canvas readable (preserveDrawingBuffer), and count the player's audio callbacks that output sound.
    var wsAudio = {callbacks: 0, audible: 0};
    var getContext = HTMLCanvasElement.prototype.getContext;
    HTMLCanvasElement.prototype.getContext = function (type, attrs) {
        if (type === "webgl" || type === "experimental-webgl") {
            attrs = Object.assign({}, attrs || {}, {preserveDrawingBuffer: true});
        }
        return getContext.call(this, type, attrs);
    };
    // The MSE provider's MediaSources and SourceBuffers (by MIME type): `video.buffered` is the intersection of the
    // two tracks, so a check that fails on it can say which track stopped growing, or that the SDK never got that far.
    var sourceBuffers = [], mediaSources = [];
    if (window.MediaSource) {
        var addSourceBuffer = MediaSource.prototype.addSourceBuffer;
        MediaSource.prototype.addSourceBuffer = function (mime) {
            var sb = addSourceBuffer.call(this, mime);
            sourceBuffers.push({mime: mime, buffer: sb, errors: 0});
            sb.addEventListener("error", function () { sourceBuffers.find((e) => e.buffer === sb).errors++; });
            return sb;
        };
        var NativeMediaSource = window.MediaSource;
        window.MediaSource = class extends NativeMediaSource {
            constructor() { super(); mediaSources.push(this); }
        };
    }
    function sourceBufferEnds() {
        return sourceBuffers.map(function (e) {
            var b;
            try { b = e.buffer.buffered; } catch (err) { return {mime: e.mime, removed: true}; }
            var ranges = [];
            for (var i = 0; i < b.length; i++) { ranges.push([b.start(i), b.end(i)]); }
            return {mime: e.mime, ranges: ranges, updating: e.buffer.updating, errors: e.errors};
        });
    }
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (Ctx && Ctx.prototype.createScriptProcessor) {
        var createScriptProcessor = Ctx.prototype.createScriptProcessor;
        Ctx.prototype.createScriptProcessor = function () {
            var node = createScriptProcessor.apply(this, arguments);
            var handler = null;
            Object.defineProperty(node, "onaudioprocess", {
                get: function () { return handler; },
                set: function (fn) {
                    handler = fn;
                    node.addEventListener("audioprocess", function (e) {
                        fn.call(node, e);
                        var out = e.outputBuffer.getChannelData(0), peak = 0;
                        for (var i = 0; i < out.length; i++) {
                            peak = Math.max(peak, Math.abs(out[i]));
                        }
                        wsAudio.callbacks++;
                        if (peak > 0.01) {
                            wsAudio.audible++;
                        }
                    });
                }
            });
            return node;
        };
    }
    var SERVER = params.get("server") || ("ws://" + location.host + "/");

    var sessions = {};   // key -> {session, statuses: [...]}
    var streams = {};    // key -> {stream, name, display, statuses: [...], events: [...]}
    var log = [];        // every recorded event, in order

    function now() {
        return Math.round(performance.now());
    }

    function C() {
        return Flashphoner.constants;
    }

    function record(entry) {
        entry.t = now();
        log.push(entry);
        console.log("harness " + JSON.stringify(entry));
        return entry;
    }

    function sleep(ms) {
        return new Promise(function (resolve) { setTimeout(resolve, ms); });
    }

    function waitFor(pred, timeoutMs, what) {
        var t0 = now();
        return new Promise(function (resolve, reject) {
            (function poll() {
                var v;
                try {
                    v = pred();
                } catch (e) {
                    reject(e);
                    return;
                }
                if (v) {
                    resolve(v);
                } else if (now() - t0 > timeoutMs) {
                    reject(new Error("timeout after " + timeoutMs + " ms waiting for " + what));
                } else {
                    setTimeout(poll, 20);
                }
            })();
        });
    }

    function newDisplay(key) {
        var div = document.createElement("div");
        div.className = "display";
        div.id = "display-" + key;
        document.getElementById("displays").appendChild(div);
        return div;
    }

    function videoOf(key) {
        var s = streams[key];
        return s ? (s.display.querySelector("video") || s.display.querySelector("canvas")) : null;
    }

    // A clock in the picture, for added latency measured on what the viewer renders: the low 24 bits of the
    // publisher's Date.now() (ms) as 24 black/white cells in a strip along the top, and below them the same
    // cells inverted, so a reader can tell a clean cell (the two rows differ) from a smeared one. Publisher and
    // viewer pages share the machine's clock.
    var TC_BITS = 24, TC_ROW = 16;

    function drawTimeCode(ctx, width, ms) {
        var cell = width / TC_BITS;
        for (var i = 0; i < TC_BITS; i++) {
            var bit = (ms >>> (TC_BITS - 1 - i)) & 1;
            ctx.fillStyle = bit ? "#fff" : "#000";
            ctx.fillRect(Math.floor(i * cell), 0, Math.ceil(cell), TC_ROW);
            ctx.fillStyle = bit ? "#000" : "#fff";
            ctx.fillRect(Math.floor(i * cell), TC_ROW, Math.ceil(cell), TC_ROW);
        }
    }

    // Reads the clock back from a rendered picture (<video> or WSPlayer's canvas): the publisher's ms (low 24
    // bits), or null when any cell is unclear (a frame still being refined, or no picture yet).
    var tcCanvas = null;

    function readTimeCode(el) {
        var srcW = el.tagName === "CANVAS" ? el.width : el.videoWidth;
        var srcH = el.tagName === "CANVAS" ? el.height : el.videoHeight;
        if (!srcW || !srcH) {
            return null;
        }
        var W = TC_BITS * 8, H = 16;
        if (!tcCanvas) {
            tcCanvas = document.createElement("canvas");
            tcCanvas.width = W;
            tcCanvas.height = H;
        }
        var ctx = tcCanvas.getContext("2d", {willReadFrequently: true});
        ctx.drawImage(el, 0, 0, srcW, srcH * (2 * TC_ROW) / 480, 0, 0, W, H);  // the strip, at 8x8 px per cell
        var data = ctx.getImageData(0, 0, W, H).data;
        function luma(x, y) {  // mean of the 4x4 centre of an 8x8 cell
            var sum = 0;
            for (var dy = 2; dy < 6; dy++) {
                for (var dx = 2; dx < 6; dx++) {
                    var o = 4 * ((y + dy) * W + x + dx);
                    sum += 0.299 * data[o] + 0.587 * data[o + 1] + 0.114 * data[o + 2];
                }
            }
            return sum / 16;
        }
        var value = 0;
        for (var i = 0; i < TC_BITS; i++) {
            var top = luma(i * 8, 0), bottom = luma(i * 8, 8);
            if (Math.abs(top - bottom) < 96) {
                return null;
            }
            value = value * 2 + (top > bottom ? 1 : 0);
        }
        return value;
    }

    function latencyOf(code) {  // now minus the publisher's clock in the picture, mod 2^24 ms
        var mod = 1 << TC_BITS;
        return ((Date.now() % mod) - code + mod) % mod;
    }

    // A moving test pattern for browsers whose fake camera is a flat colour (Firefox): colour bars
    // that scroll, a bouncing box, a frame counter and some random blocks so the encoder has detail.
    function canvasStream(width, height, fps) {
        var canvas = document.createElement("canvas");
        canvas.width = width;
        canvas.height = height;
        var ctx = canvas.getContext("2d");
        var frame = 0;
        var colours = ["#c00", "#0c0", "#00c", "#cc0", "#0cc", "#c0c", "#fff", "#888"];

        function draw() {
            frame++;
            var barW = width / colours.length;
            for (var i = 0; i < colours.length; i++) {
                ctx.fillStyle = colours[(i + Math.floor(frame / 10)) % colours.length];
                ctx.fillRect(((i * barW + frame * 4) % width), 0, barW + 1, height);
            }
            for (var j = 0; j < 60; j++) {
                ctx.fillStyle = "rgb(" + ((Math.random() * 255) | 0) + "," + ((Math.random() * 255) | 0) + "," +
                    ((Math.random() * 255) | 0) + ")";
                ctx.fillRect((Math.random() * width) | 0, (Math.random() * height) | 0, 16, 16);
            }
            var x = Math.abs((frame * 7) % (2 * (width - 80)) - (width - 80));
            var y = Math.abs((frame * 5) % (2 * (height - 80)) - (height - 80));
            ctx.fillStyle = "#000";
            ctx.fillRect(x, y, 80, 80);
            ctx.fillStyle = "#fff";
            ctx.font = "bold 40px monospace";
            ctx.fillText(String(frame), 20, height - 20);
            drawTimeCode(ctx, width, Date.now());
        }

        draw();
        setInterval(draw, 1000 / fps);
        var stream = canvas.captureStream(fps);
        return stream;
    }

    function attachStream(key, stream, name, display) {
        var entry = {stream: stream, name: name, display: display, statuses: [], events: []};
        streams[key] = entry;
        var ST = C().STREAM_STATUS;
        [ST.PENDING, ST.PUBLISHING, ST.PLAYING, ST.UNPUBLISHED, ST.STOPPED, ST.FAILED, ST.NOT_ENOUGH_BANDWIDTH,
            ST.RESIZE, ST.PLAYBACK_PROBLEM].forEach(function (status) {
            if (!status) {
                return;
            }
            stream.on(status, function (s) {
                var info = s.getInfo ? s.getInfo() : undefined;
                var errorInfo = s.getErrorInfo ? s.getErrorInfo() : undefined;
                // `status` is the callback that fired: RESIZE fires its own callback while s.status()
                // stays PLAYING
                entry.statuses.push(record({kind: "status", key: key, status: status, streamStatus: s.status(),
                    info: info, errorInfo: errorInfo}));
            });
        });
        stream.on(C().STREAM_EVENT, function (ev) {
            entry.events.push(record({kind: "event", key: key, type: ev.type, payload: ev.payload}));
        });
        // The SDK's own verdict on each in/outboundVideoRate message (its Kalman-filtered byte counts against the
        // server's videoRate): what an application shows as the connection's quality.
        entry.quality = [];
        stream.on(C().CONNECTION_QUALITY.UPDATE, function (quality, clientFiltered, serverFiltered) {
            entry.quality.push({quality: quality, client: Math.round(clientFiltered),
                server: Math.round(serverFiltered), t: now()});
        });
        return entry;
    }

    function summarizeStats(raw) {
        var out = {inbound: {}, outbound: {}, pair: null};
        var keep = ["bytesReceived", "bytesSent", "packetsReceived", "packetsSent", "packetsLost", "framesDecoded",
            "framesEncoded", "framesReceived", "framesDropped", "keyFramesDecoded", "keyFramesEncoded", "frameWidth",
            "frameHeight", "framesPerSecond", "qualityLimitationReason", "nackCount", "pliCount", "firCount", "jitter",
            "totalSamplesReceived", "concealedSamples", "retransmittedBytesSent", "targetBitrate", "encoderImplementation",
            "decoderImplementation", "ssrc", "mid"];
        function pick(report) {
            var o = {};
            keep.forEach(function (k) {
                if (report[k] !== undefined) {
                    o[k] = report[k];
                }
            });
            return o;
        }
        (raw["inbound-rtp"] || []).forEach(function (r) {
            out.inbound[r.kind] = pick(r);
        });
        (raw["outbound-rtp"] || []).forEach(function (r) {
            out.outbound[r.kind] = pick(r);
        });
        function candidate(kind, id) {
            return (raw[kind] || []).filter(function (c) { return c.id === id; })[0] || {};
        }
        (raw["candidate-pair"] || []).forEach(function (r) {
            if (r.nominated && r.state === "succeeded") {
                var remote = candidate("remote-candidate", r.remoteCandidateId);
                out.pair = {availableOutgoingBitrate: r.availableOutgoingBitrate,
                    availableIncomingBitrate: r.availableIncomingBitrate, currentRoundTripTime: r.currentRoundTripTime,
                    localProtocol: candidate("local-candidate", r.localCandidateId).protocol,
                    remoteProtocol: remote.protocol, remotePort: remote.port, remoteTcpType: remote.tcpType};
            }
        });
        (raw["codec"] || []).forEach(function (r) {
            out.codecs = out.codecs || [];
            out.codecs.push(r.mimeType);
        });
        return out;
    }

    // Grey-scale thumbnail of the element's current frame.
    function grab(video, w, h) {
        var canvas = document.createElement("canvas");
        canvas.width = w;
        canvas.height = h;
        var ctx = canvas.getContext("2d", {willReadFrequently: true});
        ctx.drawImage(video, 0, 0, w, h);
        var data = ctx.getImageData(0, 0, w, h).data;
        var grey = new Float32Array(w * h);
        for (var i = 0; i < w * h; i++) {
            grey[i] = 0.299 * data[4 * i] + 0.587 * data[4 * i + 1] + 0.114 * data[4 * i + 2];
        }
        return grey;
    }

    var T = {
        server: SERVER,
        log: log,

        init: async function () {
            // ?providers=WebRTC,MSE: the pages that play over MSE (or WSPlayer) need those providers too
            var providers = (params.get("providers") || "WebRTC").split(",");
            await Flashphoner.init({preferredMediaProviders: providers,
                receiverLocation: "/sdk/WSReceiver2.js", decoderLocation: "/sdk/video-worker2.js"});
            return {providers: Flashphoner.getMediaProviders(), userAgent: navigator.userAgent,
                rvfc: "requestVideoFrameCallback" in HTMLVideoElement.prototype,
                nativePromise: /\[native code\]/.test(String(window.Promise))};
        },

        // options: more of createSession's options (receiveProbes, probesInterval, ...)
        connect: function (key, options) {
            var ST = C().SESSION_STATUS;
            return new Promise(function (resolve, reject) {
                var session = Flashphoner.createSession(Object.assign({urlServer: SERVER}, options || {}));
                var entry = {session: session, statuses: []};
                sessions[key] = entry;
                [ST.ESTABLISHED, ST.DISCONNECTED, ST.FAILED, ST.WARN].forEach(function (status) {
                    session.on(status, function (s, obj) {
                        entry.statuses.push(record({kind: "session", key: key, status: status,
                            info: status === ST.WARN ? obj : undefined}));
                        if (status === ST.ESTABLISHED) {
                            resolve(status);
                        } else if (status !== ST.WARN) {
                            reject(new Error("session " + key + " " + status));
                        }
                    });
                });
            });
        },

        disconnect: function (key) {
            sessions[key].session.disconnect();
        },

        sessionStatuses: function (key) {
            return sessions[key].statuses.map(function (e) { return e.status; });
        },

        // opts: {width, height, canvas: bool, fps}
        publish: function (key, sessionKey, name, opts) {
            opts = opts || {};
            var width = opts.width || 640, height = opts.height || 480;
            var constraints = {audio: true, video: {width: width, height: height}};
            if (opts.canvas) {
                constraints.customStream = canvasStream(width, height, opts.fps || 30);
                constraints.video = false;  // the SDK asks getUserMedia for the audio only and adds it
            }
            var display = newDisplay(key);
            var options = {
                name: name, display: display, constraints: constraints, cacheLocalResources: false,
                receiveVideo: false, receiveAudio: false, stripCodecs: opts.stripCodecs || []
            };
            if (opts.transport) {
                options.transport = opts.transport;  // the SDK's "TCP": WebRTC media over ICE-TCP
            }
            var stream = sessions[sessionKey].session.createStream(options);
            attachStream(key, stream, name, display);
            record({kind: "call", key: key, call: "publish", name: name});
            stream.publish();
            return key;
        },

        play: function (key, sessionKey, name, opts) {
            opts = opts || {};
            var display = newDisplay(key);
            var options = {name: name, display: display};
            if (opts.mediaProvider) {
                options.mediaProvider = opts.mediaProvider;  // "MSE" / "WSPlayer": the second-WebSocket players
            }
            if (opts.constraints) {
                options.constraints = opts.constraints;
            }
            if (opts.transport) {
                options.transport = opts.transport;
            }
            var stream = sessions[sessionKey].session.createStream(options);
            attachStream(key, stream, name, display);
            record({kind: "call", key: key, call: "play", name: name});
            stream.play();
            return key;
        },

        stop: function (key) {
            record({kind: "call", key: key, call: "stop"});
            streams[key].stream.stop();
        },

        statuses: function (key) {
            return streams[key].statuses;
        },

        events: function (key) {
            return streams[key].events;
        },

        quality: function (key) {
            return streams[key].quality;
        },

        // The first recorded status (from index `from`) that is one of `wanted`.
        waitStatus: function (key, wanted, timeoutMs, from) {
            from = from || 0;
            return waitFor(function () {
                var list = streams[key].statuses;
                for (var i = from; i < list.length; i++) {
                    if (wanted.indexOf(list[i].status) >= 0) {
                        return list[i];
                    }
                }
                return null;
            }, timeoutMs || 10000, key + " status " + wanted.join("|")).catch(function (e) {
                return {status: "TIMEOUT", info: e.message, history: streams[key].statuses.map(function (s) {
                    return s.status;
                })};
            });
        },

        waitEvent: function (key, type, timeoutMs, from) {
            from = from || 0;
            return waitFor(function () {
                var list = streams[key].events;
                for (var i = from; i < list.length; i++) {
                    if (list[i].type === type) {
                        return list[i];
                    }
                }
                return null;
            }, timeoutMs || 5000, key + " event " + type).catch(function (e) {
                return {type: "TIMEOUT", info: e.message};
            });
        },

        mute: function (key, what) {
            var s = streams[key].stream;
            record({kind: "call", key: key, call: what});
            s[what]();
            return {audioMuted: s.isAudioMuted(), videoMuted: s.isVideoMuted()};
        },

        stats: function (key) {
            return new Promise(function (resolve, reject) {
                var timer = setTimeout(function () { reject(new Error("getStats did not answer")); }, 5000);
                streams[key].stream.getStats(function (raw) {
                    clearTimeout(timer);
                    resolve(summarizeStats(raw));
                }, true);
            });
        },

        // Samples the outbound video every second: bytesSent, frame size, fps, limitation.
        startBitrateSampler: function (key) {
            var entry = streams[key];
            entry.bitrate = [];
            entry.bitrateTimer = setInterval(function () {
                T.stats(key).then(function (st) {
                    var v = st.outbound.video || {};
                    entry.bitrate.push({t: now(), bytesSent: v.bytesSent, frameWidth: v.frameWidth,
                        frameHeight: v.frameHeight, fps: v.framesPerSecond, limitation: v.qualityLimitationReason,
                        targetBitrate: v.targetBitrate, available: st.pair && st.pair.availableOutgoingBitrate,
                        encoder: v.encoderImplementation});
                }, function () {});
            }, 1000);
        },

        bitrateSamples: function (key) {
            var entry = streams[key];
            clearInterval(entry.bitrateTimer);
            return entry.bitrate || [];
        },

        // Two thumbnails of the remote video `gapMs` apart: how much changed, and whether it is a picture.
        frameCheck: function (key, gapMs) {
            var video = videoOf(key);
            if (!video) {
                return Promise.resolve({error: "no <video> in the display"});
            }
            var canvas = video.tagName === "CANVAS";  // WSPlayer's picture
            return waitFor(function () {
                return canvas ? video.width !== 300 && video.width !== 320 : video.videoWidth > 0 && video.readyState >= 2;
            }, canvas ? 10000 : 5000,
                "video dimensions").then(function () {
                var w = 160, h = 120;
                var a = grab(video, w, h);
                return sleep(gapMs || 700).then(function () {
                    var b = grab(video, w, h);
                    var diff = 0, changed = 0, sum = 0, sumSq = 0;
                    for (var i = 0; i < a.length; i++) {
                        var d = Math.abs(a[i] - b[i]);
                        diff += d;
                        if (d > 16) {
                            changed++;
                        }
                        sum += b[i];
                        sumSq += b[i] * b[i];
                    }
                    var n = a.length, mean = sum / n;
                    return {videoWidth: canvas ? video.width : video.videoWidth,
                        videoHeight: canvas ? video.height : video.videoHeight,
                        meanAbsDiff: diff / n, changedFraction: changed / n, meanLuma: mean,
                        stdLuma: Math.sqrt(Math.max(0, sumSq / n - mean * mean)), paused: canvas ? false : video.paused,
                        currentTime: video.currentTime};
                });
            }, function (e) {
                return {error: e.message, videoWidth: video.videoWidth, readyState: video.readyState};
            });
        },

        // A player that has just said PLAYING may still be starting (a cold browser, a busy machine), and a loaded
        // machine can freeze a picture for a moment: look again, up to `tries` times a second apart, as a viewer
        // keeps watching. A picture that never moves is reported as it is (the last look), and the tests'
        // thresholds judge it; `looks` says how many it took.
        watchFrames: async function (key, tries) {
            var frames = null;
            for (var look = 1; look <= (tries || 3); look++) {
                frames = Object.assign(await T.frameCheck(key, 700), {looks: look});
                if (!frames.error && frames.meanAbsDiff > 0.5 && frames.changedFraction > 0.005) {
                    break;
                }
                await sleep(1000);
            }
            return frames;
        },

        // Added latency as the viewer sees it: plays `name` with `provider`, waits for its first picture and
        // `settleMs`, then for `probeMs` reads the publisher's clock (drawTimeCode) from every rendered frame
        // (<video>: requestVideoFrameCallback; WSPlayer's canvas: every animation frame) and subtracts it from
        // this page's clock. `series`: [ms since play(), latency] every ~250 ms from the first picture on.
        providerLatency: async function (sessionKey, name, provider, settleMs, probeMs) {
            const key = "plat-" + provider + "-" + Math.random().toString(36).slice(2, 6);
            const display = newDisplay(key);
            const stream = sessions[sessionKey].session.createStream({name: name, display: display,
                mediaProvider: provider});
            const entry = attachStream(key, stream, name, display);
            const t0 = performance.now();
            stream.play();
            const samples = [], series = [];
            let unreadable = 0, lastSeries = -1e9, firstMs = null, running = true;
            function sample(el) {
                const code = readTimeCode(el);
                if (code === null) {
                    unreadable++;
                    return;
                }
                const now = performance.now(), lat = latencyOf(code);
                if (firstMs === null) {
                    firstMs = Math.round(now - t0);
                }
                if (now - lastSeries >= 250) {
                    lastSeries = now;
                    series.push([Math.round(now - t0), lat]);
                }
                if (now - t0 >= firstMs + settleMs) {
                    samples.push(lat);
                }
            }
            function loop() {
                if (!running) {
                    return;
                }
                const v = display.querySelector("video"), c = display.querySelector("canvas");
                if (v && v.requestVideoFrameCallback) {
                    v.requestVideoFrameCallback(function () { sample(v); loop(); });
                } else {
                    if (c && c.width !== 300 && c.width !== 320) {
                        sample(c);
                    }
                    requestAnimationFrame(loop);
                }
            }
            loop();
            await waitFor(function () {
                return firstMs !== null || entry.statuses.some((s) => s.status === "FAILED");
            }, 15000, "first readable frame").catch(function () {});
            if (firstMs !== null) {
                await sleep(settleMs + probeMs);
            }
            running = false;
            stream.stop();
            await T.waitStatus(key, ["STOPPED", "FAILED"], 5000).catch(function () {});
            display.remove();
            samples.sort((a, b) => a - b);
            const pct = (p) => samples.length ? samples[Math.min(samples.length - 1,
                Math.max(0, Math.ceil(p / 100 * samples.length) - 1))] : null;
            return {provider: provider, firstReadableMs: firstMs, samples: samples.length, unreadable: unreadable,
                p50: pct(50), p95: pct(95), min: samples[0], max: samples[samples.length - 1], series: series};
        },

        // Time to first frame per media provider (README figures): play() on a fresh stream until its first
        // picture is shown — <video>: requestVideoFrameCallback (else readyState >= 2); WSPlayer's canvas: its first
        // render, which sizes it to the picture. Then, while it plays, how far the MSE buffer runs ahead of
        // what is shown (the SDK's own playout buffer). Then stop().
        providerTtff: async function (sessionKey, name, provider, count) {
            var out = [];
            for (let i = 0; i < count; i++) {
                const key = "pttff-" + provider + "-" + i + "-" + Math.random().toString(36).slice(2, 6);
                const display = newDisplay(key);
                const stream = sessions[sessionKey].session.createStream({name: name, display: display,
                    mediaProvider: provider});
                const entry = attachStream(key, stream, name, display);
                let first = null;
                const t0 = performance.now();
                stream.play();
                let hooked = false;
                await waitFor(function () {
                    const v = display.querySelector("video");
                    const c = display.querySelector("canvas");
                    if (v && !hooked && v.requestVideoFrameCallback) {
                        hooked = true;
                        v.requestVideoFrameCallback(function () {
                            if (first === null) {
                                first = performance.now();
                            }
                        });
                    }
                    if (first === null && v && !v.requestVideoFrameCallback && v.readyState >= 2) {
                        first = performance.now();
                    }
                    if (first === null && c && c.width !== 300 && c.width !== 320) {
                        first = performance.now();
                    }
                    return first !== null || entry.statuses.some((s) => s.status === "FAILED");
                }, 15000, "first frame").catch(function () {});
                const result = {provider: provider, ttffMs: first !== null ? Math.round(first - t0) : null};
                const v = display.querySelector("video");
                if (v && provider === "MSE") {
                    await sleep(3000);
                    const b = v.buffered;
                    result.bufferAheadMs = b.length ? Math.round((b.end(b.length - 1) - v.currentTime) * 1000) : null;
                }
                stream.stop();
                await T.waitStatus(key, ["STOPPED", "FAILED"], 5000);
                display.remove();
                out.push(result);
            }
            return out;
        },

        // WSPlayer's audio callbacks so far (all its players on this page): how many output sound.
        wsAudioCheck: async function (gapMs) {
            var a = Object.assign({}, wsAudio);
            await sleep(gapMs || 1000);
            return {before: a, after: Object.assign({}, wsAudio)};
        },

        // What an MSE player's <video> has of audio: the decoded audio bytes (Chromium), mozHasAudio (Firefox),
        // and how much media is buffered; sampled twice, `gapMs` apart, so growth shows audio being played. When
        // nothing was appended in that gap, how long until something is (`grewAfterMs`, up to `growWithinMs`).
        audioCheck: async function (key, gapMs, growWithinMs) {
            var video = videoOf(key);
            if (!video) {
                return {error: "no <video> in the display"};
            }
            function sample() {
                var b = video.buffered;
                return {decodedAudioBytes: video.webkitAudioDecodedByteCount, mozHasAudio: video.mozHasAudio,
                    bufferedEnd: b.length ? b.end(b.length - 1) : 0, currentTime: video.currentTime,
                    muted: video.muted, paused: video.paused, sourceBuffers: sourceBufferEnds(),
                    mediaSources: mediaSources.map((m) => m.readyState), readyState: video.readyState};
            }
            var a = sample(), t0 = performance.now();
            await sleep(gapMs || 1000);
            var after = sample(), end = after.bufferedEnd;
            while (end <= a.bufferedEnd && performance.now() - t0 < (gapMs || 1000) + (growWithinMs || 0)) {
                await sleep(100);
                end = sample().bufferedEnd;
            }
            return {before: a, after: after, grewAfterMs: end > a.bufferedEnd ? Math.round(performance.now() - t0) : null,
                    finalEnd: end};
        },

        // The SDK's own promises may come from its bundled Promise polyfill, which the driver's
        // evaluate() does not await: always hand back a native promise (async function).
        available: async function (sessionKey, name) {
            var stream = sessions[sessionKey].session.createStream({name: name, display: newDisplay("avail-" + name)});
            try {
                await stream.available();
                return {available: true, info: stream.getInfo()};
            } catch (e) {
                return {available: false, info: stream.getInfo()};
            }
        },

        sendData: async function (sessionKey, payload) {
            try {
                return {result: "resolved", info: await sessions[sessionKey].session.sendData(payload)};
            } catch (info) {
                return {result: "rejected", info: info};
            }
        },

        // Time to first frame: play() -> first frame presented (requestVideoFrameCallback, else 'playing'),
        // then stop() -> STOPPED, `count` times in a row.
        ttff: async function (sessionKey, name, count) {
            var out = [];
            for (let i = 0; i < count; i++) {
                const key = "ttff-" + name + "-" + i;
                const display = newDisplay(key);
                let firstFrame = null, playingAt = null, method = null, hooked = false;
                const hook = (video) => {
                    if (hooked) {
                        return;
                    }
                    hooked = true;
                    if (video.requestVideoFrameCallback) {
                        video.requestVideoFrameCallback(() => {
                            if (firstFrame === null) {
                                firstFrame = performance.now();
                                method = "requestVideoFrameCallback";
                            }
                        });
                    }
                    video.addEventListener("playing", () => {
                        if (playingAt === null) {
                            playingAt = performance.now();
                        }
                    });
                };
                const observer = new MutationObserver(() => {
                    const v = display.querySelector("video");
                    if (v) {
                        hook(v);
                    }
                });
                observer.observe(display, {childList: true, subtree: true});
                const stream = sessions[sessionKey].session.createStream({name: name, display: display});
                const entry = attachStream(key, stream, name, display);
                const t0 = performance.now();
                stream.play();
                const v0 = display.querySelector("video");
                if (v0) {
                    hook(v0);
                }
                const hasRvfc = "requestVideoFrameCallback" in HTMLVideoElement.prototype;
                const hasStatus = (st) => entry.statuses.some((s) => s.status === st);
                // wait for the frame and for PLAYING (the first frame may be shown just before PLAYING is read)
                const ok = await waitFor(() => hasStatus("FAILED") || (hasStatus("PLAYING") &&
                        (firstFrame !== null || (!hasRvfc && playingAt !== null))), 10000, "first frame")
                    .then(() => true, () => false);
                if (firstFrame === null && playingAt !== null) {
                    firstFrame = playingAt;
                    method = "playing";
                }
                const playingStatus = entry.statuses.filter((s) => s.status === "PLAYING")[0];
                observer.disconnect();
                const result = {i: i, ok: ok && firstFrame !== null, method: method,
                    ttffMs: firstFrame !== null ? Math.round(firstFrame - t0) : null,
                    playingEventMs: playingAt !== null ? Math.round(playingAt - t0) : null,
                    playingStatusMs: playingStatus ? Math.round(playingStatus.t - t0) : null,
                    statuses: entry.statuses.map((s) => s.status)};
                stream.stop();
                const stopped = await T.waitStatus(key, ["STOPPED", "FAILED"], 5000);
                result.stop = stopped.status;
                out.push(result);
                display.remove();
            }
            return out;
        }
    };

    window.T = T;
})();
