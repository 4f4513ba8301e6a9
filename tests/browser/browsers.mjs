// The browsers of the browser tests: Debian's chromium (CDP) and firefox-esr (WebDriver BiDi), headless, fake
// camera and microphone, nothing leaving 127.0.0.1. Shared by driver.mjs and clients_driver.mjs.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import puppeteer from "puppeteer-core";

export function firstExisting(paths) {
    return paths.find((p) => fs.existsSync(p));
}

export const CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,WebRtcHideLocalIpsWithMdns",
    "--no-default-browser-check", "--disable-domain-reliability", "--metrics-recording-only",
    "--window-size=1280,900",
    // Nothing may leave 127.0.0.1: every other host name fails to resolve without asking DNS (sign-in,
    // autofill and update services still try, whatever the flags above switch off).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--disable-client-side-phishing-detection", "--disable-default-apps", "--disable-extensions",
    "--disable-breakpad", "--disable-crash-reporter",
];

// Nothing may leave 127.0.0.1: puppeteer's own Firefox profile already points update, blocklist and
// telemetry URLs at a dummy host; these switch the features off as well, and send whatever is left
// (remote settings ignores its server pref outside automation) to a dead proxy on 127.0.0.1:9, so that no
// host name is even looked up. Loopback is never proxied.
export const FIREFOX_PREFS = {
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.socks": "127.0.0.1",
    "network.proxy.socks_port": 9,
    "network.proxy.socks_remote_dns": true,
    "network.proxy.no_proxies_on": "127.0.0.1,localhost",
    "network.proxy.allow_hijacking_localhost": false,
    "network.proxy.allow_bypass": false,     // service requests would otherwise retry a dead proxy directly
    "network.proxy.failover_direct": false,
    "media.navigator.streams.fake": true,
    "media.navigator.permission.disabled": true,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    // ICE on 127.0.0.1: Firefox gathers loopback candidates only with this pref, and gathers on every
    // interface (not just the default route's) only for an origin with camera/microphone permission,
    // which a player page never asked for: grant it to all.
    "media.peerconnection.ice.loopback": true,
    "media.peerconnection.ice.default_address_only": false,
    "media.peerconnection.ice.obfuscate_host_addresses": false,
    "media.peerconnection.ice.force_interface": "lo",   // gather on loopback only
    "permissions.default.camera": 1,
    "permissions.default.microphone": 1,
    "app.update.enabled": false,
    "app.update.auto": false,
    "app.update.staging.enabled": false,
    "app.normandy.enabled": false,
    "app.shield.optoutstudies.enabled": false,
    "toolkit.telemetry.enabled": false,
    "toolkit.telemetry.unified": false,
    "toolkit.telemetry.archive.enabled": false,
    "toolkit.telemetry.server": "",
    "datareporting.healthreport.uploadEnabled": false,
    "datareporting.policy.dataSubmissionEnabled": false,
    "network.captive-portal-service.enabled": false,
    "network.connectivity-service.enabled": false,
    "network.dns.disablePrefetch": true,
    "network.prefetch-next": false,
    "network.predictor.enabled": false,
    "network.trr.mode": 5,
    "browser.safebrowsing.malware.enabled": false,
    "browser.safebrowsing.phishing.enabled": false,
    "browser.safebrowsing.downloads.enabled": false,
    "browser.safebrowsing.downloads.remote.enabled": false,
    "browser.safebrowsing.provider.google.updateURL": "",
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "services.settings.server": "http://127.0.0.1:9/",
    "services.settings.poll_interval": 86400 * 365,
    "extensions.blocklist.enabled": false,
    "extensions.getAddons.cache.enabled": false,
    "browser.region.network.url": "",
    "browser.region.update.enabled": false,
    "browser.search.geoip.url": "",
    "browser.newtabpage.activity-stream.feeds.telemetry": false,
    "browser.newtabpage.activity-stream.telemetry": false,
    "browser.ping-centre.telemetry": false,
    "browser.discovery.enabled": false,
    "browser.topsites.contile.enabled": false,
    "messaging-system.rsexperimentloader.enabled": false,
    "security.OCSP.enabled": 0,
    "security.remote_settings.crlite_filters.enabled": false,
    "security.remote_settings.intermediates.enabled": false,
    "media.gmp-gmpopenh264.enabled": false,
    "media.gmp-manager.url": "",
    "media.gmp-manager.updateEnabled": false,
    "dom.push.enabled": false,
    "dom.push.connection.enabled": false,
    "geo.enabled": false,
    "browser.tabs.remote.warmup.enabled": false,
    // keep a page that is not in front running at full speed (canvas timers, video rendering)
    "dom.min_background_timeout_value": 4,
    "dom.timeout.enable_budget_timer_throttling": false,
};

export async function launch(name, extraArgs = []) {
    if (name === "chromium") {
        const executablePath = process.env.CHROMIUM_PATH ||
            firstExisting(["/usr/lib/chromium/chromium", "/usr/bin/chromium"]);
        const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "webcall-chromium-"));
        const browser = await puppeteer.launch({
            browser: "chrome", executablePath, headless: true, userDataDir, args: [...CHROMIUM_ARGS, ...extraArgs],
            protocolTimeout: 60000,
        });
        browser.__cleanup = () => fs.rmSync(userDataDir, {recursive: true, force: true});
        return browser;
    }
    if (name === "firefox") {
        const executablePath = process.env.FIREFOX_PATH ||
            firstExisting(["/usr/lib/firefox-esr/firefox-esr", "/usr/bin/firefox-esr", "/usr/bin/firefox"]);
        const browser = await puppeteer.launch({
            browser: "firefox", executablePath, headless: true, extraPrefsFirefox: FIREFOX_PREFS,
            protocolTimeout: 60000,
        });
        browser.__cleanup = () => {};
        return browser;
    }
    throw new Error("unknown browser " + name);
}

