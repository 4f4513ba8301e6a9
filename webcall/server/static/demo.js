/*
 * webcall demo pages, built on the official Flashphoner Web SDK (global `Flashphoner`,
 * loaded from /sdk/flashphoner.js).
 *
 *   /        index.html  (<body data-page="index">)   publish a camera stream, play any stream
 *   /player  player.html (<body data-page="player">)  ?stream=NAME: muted autoplay, full window
 *   (this file and demo.css are served under /static/)
 *
 * URL parameters (both pages):
 *   server=ws://host:port/   signalling URL (default: this page's host, ws: or wss: to match)
 *   mediaProvider=WebRTC     how streams are played: WebRTC (default), MSE or WSPlayer (the second-WebSocket
 *                            players: any browser, TCP only); a comma-separated list allows several, the
 *                            first plays. Publishing is always WebRTC.
 *   stream=NAME              stream name (the player needs it; on index it prefills both panels)
 */
(function () {
    "use strict";

    // ------------------------------------------------------------------ shared helpers

    var STATS_INTERVAL_MS = 1000;
    var STOP_GRACE_MS = 5000;     // how long to wait for UNPUBLISHED/STOPPED after stop()

    function $(id) {
        return document.getElementById(id);
    }

    function param(name) {
        return new URLSearchParams(window.location.search).get(name);
    }

    function serverUrl() {
        var explicit = param("server");
        if (explicit) {
            return explicit;
        }
        var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
        return scheme + window.location.host + "/";
    }

    function randomName() {
        var s = "";
        var alphabet = "abcdefghijkmnpqrstuvwxyz23456789";
        for (var i = 0; i < 5; i++) {
            s += alphabet.charAt(Math.floor(Math.random() * alphabet.length));
        }
        return "stream-" + s;
    }

    function setText(el, text) {
        if (el) {
            el.textContent = (text === undefined || text === null || text === "") ? "—" : String(text);
        }
    }

    // badge colour follows the SDK status names
    var GOOD = ["ESTABLISHED", "PUBLISHING", "PLAYING"];
    var BUSY = ["PENDING", "CONNECTING", "CONNECTED", "STOPPING", "WAITING"];
    var BAD = ["FAILED"];

    function setBadge(el, status) {
        if (!el) {
            return;
        }
        el.textContent = status || "—";
        el.className = status ? "badge" : "";
        if (GOOD.indexOf(status) >= 0) {
            el.classList.add("good");
        } else if (BUSY.indexOf(status) >= 0) {
            el.classList.add("busy");
        } else if (BAD.indexOf(status) >= 0) {
            el.classList.add("bad");
        }
    }

    function showNotice(text) {
        var el = $("notice");
        if (el) {
            el.textContent = text;
            el.hidden = !text;
        } else if (text) {
            console.error(text);
        }
    }

    // Flashphoner.init() is async in SDK 2.0.x (it collects client info after setting up
    // the media providers); wait for it so `connection` carries that info.
    function initSdk() {
        if (!window.Flashphoner) {
            return Promise.reject(new Error(
                "The Flashphoner Web SDK did not load from /sdk/flashphoner.js (run `make sdk`)."));
        }
        var providers = playProviders();
        if (providers.indexOf("WebRTC") < 0) {
            providers.push("WebRTC");  // publishing needs it
        }
        return Promise.resolve().then(function () {
            // WSPlayer's worker scripts come from the SDK package (served by webcall under /sdk/)
            return Flashphoner.init({preferredMediaProviders: providers, receiverLocation: "/sdk/WSReceiver2.js",
                decoderLocation: "/sdk/video-worker2.js"});
        }).then(function () {
            return Flashphoner.getMediaProviders();
        });
    }

    function playProviders() {
        return (param("mediaProvider") || "WebRTC").split(",").filter(Boolean);
    }

    function describeFailure(stream) {
        var info = stream.getInfo ? stream.getInfo() : "";
        var ERROR_INFO = Flashphoner.constants.ERROR_INFO;
        if (info === ERROR_INFO.LOCAL_ERROR && stream.getErrorInfo) {
            return "Browser error: " + stream.getErrorInfo();
        }
        return info;
    }

    // Polls stream.getStats() and renders "VP8 640×480 30 fps · 812 kbps · opus".
    function StatsPoller(stream, target, outbound) {
        var last = null;
        var timer = setInterval(poll, STATS_INTERVAL_MS);

        function poll() {
            try {
                stream.getStats(render, false);
            } catch (e) {
                // the connection may just have closed; the next status change stops us
            }
        }

        function render(stats) {
            var side = outbound ? stats.outboundStream : stats.inboundStream;
            if (!side) {
                return;
            }
            var video = side.video || {};
            var audio = side.audio || {};
            var bytesKey = outbound ? "bytesSent" : "bytesReceived";
            var bytes = (video[bytesKey] || 0) + (audio[bytesKey] || 0);
            var now = Date.now();
            var parts = [];
            if (side.video) {
                var v = (video.codec || "video");
                if (video.width && video.height) {
                    v += " " + video.width + "×" + video.height;
                }
                if (video.framesPerSecond) {
                    v += " " + Math.round(video.framesPerSecond) + " fps";
                }
                parts.push(v);
            }
            if (last && now > last.time) {
                var kbps = Math.max(0, Math.round((bytes - last.bytes) * 8 / (now - last.time)));
                parts.push(kbps + " kbps");
            }
            if (side.audio) {
                parts.push(audio.codec || "audio");
            }
            last = {time: now, bytes: bytes};
            setText(target, parts.join(" · "));
        }

        this.stop = function () {
            clearInterval(timer);
        };
    }

    // ------------------------------------------------------------------ index page

    function indexPage() {
        var SESSION_STATUS = Flashphoner.constants.SESSION_STATUS;
        var STREAM_STATUS = Flashphoner.constants.STREAM_STATUS;
        var STREAM_EVENT = Flashphoner.constants.STREAM_EVENT;
        var STREAM_EVENT_TYPE = Flashphoner.constants.STREAM_EVENT_TYPE;

        var url = serverUrl();
        var session = null;
        setText($("serverUrl"), url);

        var initialName = param("stream") || randomName();
        $("publishName").value = initialName;
        $("playName").value = initialName;
        updatePlayerLink();
        $("publishName").addEventListener("input", updatePlayerLink);

        function updatePlayerLink() {
            var name = $("publishName").value.trim();
            var link = $("playerLink");
            if (name) {
                link.href = "/player?stream=" + encodeURIComponent(name);
                link.textContent = "/player?stream=" + name;
            } else {
                link.removeAttribute("href");
                link.textContent = "—";
            }
        }

        function established() {
            return session !== null && session.status() === SESSION_STATUS.ESTABLISHED;
        }

        // ---- session

        function connect() {
            setBadge($("sessionStatus"), "CONNECTING");
            $("connectBtn").disabled = true;
            try {
                session = Flashphoner.createSession({urlServer: url});
            } catch (e) {
                session = null;
                showNotice("Cannot open " + url + ": " + e.message);
                onSessionClosed("FAILED");
                return;
            }
            session.on(SESSION_STATUS.CONNECTED, function (s) {
                setBadge($("sessionStatus"), s.status());
            }).on(SESSION_STATUS.ESTABLISHED, function (s) {
                showNotice("");
                setBadge($("sessionStatus"), s.status());
                $("connectBtn").textContent = "Disconnect";
                $("connectBtn").disabled = false;
                publisher.idle();
                player.idle();
            }).on(SESSION_STATUS.DISCONNECTED, function () {
                onSessionClosed(SESSION_STATUS.DISCONNECTED);
            }).on(SESSION_STATUS.FAILED, function () {
                showNotice("The signalling WebSocket " + url + " failed. Is the server running?");
                onSessionClosed(SESSION_STATUS.FAILED);
            }).on(SESSION_STATUS.WARN, function (s, e) {
                console.warn("server warning", e);
            });
        }

        function onSessionClosed(status) {
            session = null;
            setBadge($("sessionStatus"), status);
            $("connectBtn").textContent = "Connect";
            $("connectBtn").disabled = false;
            // the SDK fails every stream of a closed session; make sure the panels follow
            publisher.sessionClosed(status);
            player.sessionClosed(status);
        }

        $("connectBtn").addEventListener("click", function () {
            if (session) {
                $("connectBtn").disabled = true;
                session.disconnect();
            } else {
                connect();
            }
        });

        // ---- one panel = one stream (publish or play)

        function Panel(opts) {
            var stream = null;
            var stats = null;
            var stopTimer = null;
            var form = $(opts.form);
            var input = $(opts.input);
            var button = $(opts.button);
            var statusEl = $(opts.status);
            var infoEl = $(opts.info);
            var statsEl = $(opts.stats);

            function clearTimers() {
                if (stats) {
                    stats.stop();
                    stats = null;
                }
                if (stopTimer) {
                    clearTimeout(stopTimer);
                    stopTimer = null;
                }
            }

            // no active stream: Publish/Play enabled if the session is up
            function idle() {
                clearTimers();
                stream = null;
                setMuteButtons(null);
                button.textContent = opts.startLabel;
                button.disabled = !established();
                input.disabled = false;
                setText(statsEl, "");
            }

            // Publisher only: mute/unmute the local tracks; the SDK tells the server, which tells players.
            function setMuteButtons(s) {
                if (!opts.publish) {
                    return;
                }
                [["muteAudioBtn", "Audio", function (x) { return x.isAudioMuted(); }],
                 ["muteVideoBtn", "Video", function (x) { return x.isVideoMuted(); }]].forEach(function (b) {
                    var el = $(b[0]);
                    el.disabled = !s;
                    el.textContent = (s && b[2](s) ? "Unmute " : "Mute ") + b[1].toLowerCase();
                    el.onclick = !s ? null : function () {
                        if (b[2](s)) { s["unmute" + b[1]](); } else { s["mute" + b[1]](); }
                        setMuteButtons(s);
                    };
                });
            }

            function running(s) {
                setMuteButtons(s);
                button.textContent = "Stop";
                button.disabled = false;
                input.disabled = true;
                if (!stats) {
                    stats = new StatsPoller(s, statsEl, opts.publish);
                }
            }

            function finished(s, status) {
                if (s !== stream) {
                    return;     // a late event from an older stream
                }
                setBadge(statusEl, status);
                var info = status === STREAM_STATUS.FAILED ? describeFailure(s) : s.getInfo();
                setText(infoEl, info);
                idle();
            }

            function start() {
                var name = input.value.trim();
                if (!name || !established()) {
                    return;
                }
                button.disabled = true;
                input.disabled = true;
                setText(infoEl, "");
                setText(statsEl, "");
                var s;
                try {
                    s = session.createStream(opts.streamOptions(name));
                } catch (e) {
                    setBadge(statusEl, STREAM_STATUS.FAILED);
                    setText(infoEl, e.message);
                    idle();
                    return;
                }
                stream = s;
                s.on(STREAM_STATUS.PENDING, function (st) {
                    if (st === stream) {
                        setBadge(statusEl, st.status());
                    }
                }).on(opts.runningStatus, function (st) {
                    if (st === stream) {
                        setBadge(statusEl, st.status());
                        setText(infoEl, st.getInfo());
                        running(st);
                    }
                }).on(opts.stoppedStatus, function (st) {
                    finished(st, opts.stoppedStatus);
                }).on(STREAM_STATUS.FAILED, function (st) {
                    finished(st, STREAM_STATUS.FAILED);
                }).on(STREAM_EVENT, function (ev) {
                    if (ev.type === STREAM_EVENT_TYPE.UNMUTE_REQUIRED) {
                        setText(infoEl, "Autoplay muted the sound: use the video controls to unmute");
                    } else if (/^(audio|video)(Muted|Unmuted)$/.test(ev.type)) {
                        setText(infoEl, "Publisher " + ev.type.replace(/([A-Z])/, " $1").toLowerCase());
                    } else if (ev.type === STREAM_EVENT_TYPE.RESIZE && ev.payload) {
                        setText(infoEl, "Resolution " + ev.payload.streamerVideoWidth + "×" +
                            ev.payload.streamerVideoHeight);
                    }
                });
                setBadge(statusEl, STREAM_STATUS.PENDING);
                try {
                    opts.publish ? s.publish() : s.play();
                } catch (e) {
                    setBadge(statusEl, STREAM_STATUS.FAILED);
                    setText(infoEl, e.message);
                    idle();
                    return;
                }
                // allow cancelling a stream the server has not answered yet
                button.textContent = "Stop";
                button.disabled = false;
            }

            function stop() {
                var s = stream;
                if (!s) {
                    return;
                }
                button.disabled = true;
                setBadge(statusEl, "STOPPING");
                s.stop();
                // If the server never confirms, free the panel anyway.
                stopTimer = setTimeout(function () {
                    if (stream === s) {
                        setBadge(statusEl, opts.stoppedStatus);
                        setText(infoEl, "No reply from the server to stop");
                        idle();
                    }
                }, STOP_GRACE_MS);
            }

            form.addEventListener("submit", function (ev) {
                ev.preventDefault();
                if (stream) {
                    stop();
                } else {
                    start();
                }
            });

            // the session went away under a running stream
            function sessionClosed(sessionStatus) {
                if (stream) {
                    setBadge(statusEl, STREAM_STATUS.FAILED);
                    setText(infoEl, "Session " + sessionStatus);
                }
                idle();
            }

            this.idle = idle;
            this.sessionClosed = sessionClosed;
        }

        var publisher = new Panel({
            publish: true,
            form: "publishForm", input: "publishName", button: "publishBtn",
            status: "publishStatus", info: "publishInfo", stats: "publishStats",
            startLabel: "Publish",
            runningStatus: STREAM_STATUS.PUBLISHING,
            stoppedStatus: STREAM_STATUS.UNPUBLISHED,
            streamOptions: function (name) {
                return {
                    name: name,
                    display: $("localDisplay"),
                    mediaProvider: "WebRTC",
                    cacheLocalResources: false,   // release the camera on stop
                    receiveVideo: false,
                    receiveAudio: false
                };
            }
        });

        var player = new Panel({
            publish: false,
            form: "playForm", input: "playName", button: "playBtn",
            status: "playStatus", info: "playInfo", stats: "playStats",
            startLabel: "Play",
            runningStatus: STREAM_STATUS.PLAYING,
            stoppedStatus: STREAM_STATUS.STOPPED,
            streamOptions: function (name) {
                return {
                    name: name,
                    display: $("remoteDisplay"),
                    mediaProvider: playProviders()[0],
                    useControls: true
                };
            }
        });

        connect();
    }

    // ------------------------------------------------------------------ player page

    function playerPage() {
        var SESSION_STATUS = Flashphoner.constants.SESSION_STATUS;
        var STREAM_STATUS = Flashphoner.constants.STREAM_STATUS;
        var STREAM_EVENT = Flashphoner.constants.STREAM_EVENT;
        var STREAM_EVENT_TYPE = Flashphoner.constants.STREAM_EVENT_TYPE;
        var RETRY_MS = 3000;

        var name = (param("stream") || "").trim();
        var url = serverUrl();
        var statusEl = $("playerStatus");
        var unmuteBtn = $("unmuteBtn");
        var session = null;
        var stream = null;
        var retryTimer = null;

        document.title = name ? name + " — webcall player" : "webcall player";

        function status(text, cls) {
            statusEl.textContent = text;
            statusEl.className = "overlay-status" + (cls ? " " + cls : "");
        }

        if (!name) {
            status("Add ?stream=NAME to the address to choose a stream.", "bad");
            return;
        }

        function retry(why) {
            status(why + " — retrying…", "bad");
            if (!retryTimer) {
                retryTimer = setTimeout(function () {
                    retryTimer = null;
                    if (session && session.status() === SESSION_STATUS.ESTABLISHED) {
                        play();
                    } else {
                        connect();
                    }
                }, RETRY_MS);
            }
        }

        function connect() {
            status("Connecting to " + url + "…");
            try {
                session = Flashphoner.createSession({urlServer: url});
            } catch (e) {
                session = null;
                status("Cannot open " + url + ": " + e.message, "bad");
                return;
            }
            session.on(SESSION_STATUS.ESTABLISHED, function () {
                play();
            }).on(SESSION_STATUS.DISCONNECTED, function () {
                session = null;
                retry("Disconnected");
            }).on(SESSION_STATUS.FAILED, function () {
                session = null;
                retry("Connection failed");
            });
        }

        function play() {
            status("Waiting for " + name + "…");
            unmuteBtn.hidden = true;
            var s;
            try {
                s = session.createStream({
                    name: name,
                    display: $("playerDisplay"),
                    mediaProvider: playProviders()[0],
                    unmutePlayOnStart: false    // autoplay is only allowed muted
                });
            } catch (e) {
                retry(e.message);
                return;
            }
            stream = s;
            s.on(STREAM_STATUS.PLAYING, function (st) {
                if (st === stream) {
                    status("PLAYING " + name, "good fade");
                    unmuteBtn.hidden = !st.isRemoteAudioMuted();
                }
            }).on(STREAM_STATUS.STOPPED, function (st) {
                if (st === stream) {
                    stream = null;
                    retry("Stopped: " + (st.getInfo() || name));
                }
            }).on(STREAM_STATUS.FAILED, function (st) {
                if (st === stream) {
                    stream = null;
                    // when the session dropped, its FAILED handler reconnects
                    if (session) {
                        retry("Failed: " + (describeFailure(st) || name));
                    }
                }
            }).on(STREAM_EVENT, function (ev) {
                if (ev.type === STREAM_EVENT_TYPE.UNMUTE_REQUIRED) {
                    unmuteBtn.hidden = false;
                }
            });
            s.play();
        }

        unmuteBtn.addEventListener("click", function () {
            if (stream) {
                stream.unmuteRemoteAudio();
                unmuteBtn.hidden = true;
            }
        });

        connect();
    }

    // ------------------------------------------------------------------ start

    // The home page's list of live streams, from GET /streams (same origin), refreshed every 2 s.
    function streamList() {
        var rows = $("streamRows");
        if (!rows) {
            return;
        }
        function cell(tr, content) {
            var td = document.createElement("td");
            if (content instanceof Node) {
                td.appendChild(content);
            } else {
                td.textContent = content;
            }
            tr.appendChild(td);
        }
        function refresh() {
            fetch("/streams", {cache: "no-store"}).then(function (r) { return r.json(); }).then(function (list) {
                rows.textContent = "";
                if (!list.length) {
                    var tr = document.createElement("tr");
                    cell(tr, "nothing is being published");
                    tr.firstChild.colSpan = 6;
                    tr.firstChild.className = "placeholder";
                    rows.appendChild(tr);
                }
                list.forEach(function (s) {
                    var tr = document.createElement("tr");
                    var m = s.metrics || {};
                    cell(tr, s.name);
                    cell(tr, s.status);
                    cell(tr, (s.videoCodec || "—") + (s.width ? " " + s.width + "×" + s.height : ""));
                    cell(tr, m.VIDEO_RATE ? Math.round(m.VIDEO_RATE / 1000) + " kbit/s · " + (m.VIDEO_FPS || 0) + " fps" : "—");
                    cell(tr, String(s.players));
                    var a = document.createElement("a");
                    a.href = "/player?stream=" + encodeURIComponent(s.name);
                    a.target = "_blank";
                    a.rel = "noopener";
                    a.textContent = "open player";
                    cell(tr, a);
                    rows.appendChild(tr);
                });
            }).catch(function () { /* the server restarts: try again next time */ });
        }
        refresh();
        setInterval(refresh, 2000);
    }

    function start() {
        var page = document.body.getAttribute("data-page") || "index";
        if (page !== "player") {
            streamList();
        }
        initSdk().then(function (providers) {
            console.log("webcall: SDK ready, media providers " + JSON.stringify(providers));
            if (page === "player") {
                playerPage();
            } else {
                indexPage();
            }
        }).catch(function (e) {
            var text = e && e.message ? e.message : String(e);
            if (/MediaProviders available/.test(text)) {
                text = "This browser cannot do WebRTC (" + text + ").";
            }
            if (page === "player" && $("playerStatus")) {
                $("playerStatus").textContent = text;
                $("playerStatus").className = "overlay-status bad";
            } else {
                showNotice(text);
                setBadge($("sessionStatus"), "FAILED");
            }
        });
    }

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
