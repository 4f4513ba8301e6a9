// The published WHIP/WHEP browser clients, bundled by the test with esbuild (tests/browser/test_clients.py) into
// whip-clients.js for whip.html: @eyevinn/whip-web-client publishes, whip-whep's WHEPClient plays. The driver
// (clients_driver.mjs) calls window.W.
import {WHIPClient} from "@eyevinn/whip-web-client";
import {WHEPClient} from "whip-whep/whep.js";

const state = {};

function waitFor(cond, ms, what) {
    const deadline = Date.now() + ms;
    return new Promise((resolve, reject) => {
        const tick = () => {
            if (cond()) {
                resolve();
            } else if (Date.now() > deadline) {
                reject(new Error("timeout waiting for " + what));
            } else {
                setTimeout(tick, 50);
            }
        };
        tick();
    });
}

window.W = {
    async publish(name) {
        const media = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480}, audio: true});
        document.getElementById("local").srcObject = media;
        // iceServers: none, so that nothing asks the default STUN server of the library
        const client = new WHIPClient({endpoint: `${location.origin}/whip/${encodeURIComponent(name)}`,
            opts: {iceServers: [], debug: true}});
        state.whip = client;
        await client.ingest(media);
        const resource = await client.getResourceUrl();
        await waitFor(() => ["connected", "completed"].includes(client.getICEConnectionState()), 10000,
            "WHIP ICE connected");
        return {resource, ice: client.getICEConnectionState(), trickle: client.supportTrickleIce()};
    },

    async play(name) {
        const pc = new RTCPeerConnection({iceServers: []});
        pc.addTransceiver("video", {direction: "recvonly"});
        pc.addTransceiver("audio", {direction: "recvonly"});
        const stream = new MediaStream();
        const video = document.getElementById("remote");
        pc.ontrack = (event) => {
            stream.addTrack(event.track);
            video.srcObject = stream;
        };
        const client = new WHEPClient();
        state.whep = client;
        state.whepPc = pc;
        await client.view(pc, `${location.origin}/whep/${encodeURIComponent(name)}`);
        await waitFor(() => pc.connectionState === "connected", 10000, "WHEP connected");
        await video.play().catch(() => {});
        return {resource: client.resourceURL ? String(client.resourceURL) : null, connection: pc.connectionState,
            tracks: stream.getTracks().map((t) => t.kind).sort()};
    },

    async stopPlay() {
        await state.whep.stop();
        return state.whepPc.connectionState;
    },

    async stopPublish() {
        await state.whip.destroy();
        return "destroyed";
    },
};
