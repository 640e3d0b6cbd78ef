// The peer of issue 16's browser benchmark (gateway/bench/browser.sh runs
// it): Crawlee's PuppeteerCrawler loading the same script-rendered pages as
// the Clawgress chromium jobs, through the same gateway, with as many pages
// at once. Prints one JSON line of figures on stdout.
//
// Crawlee is configured as a scraping team would, with only what equal work
// needs changed: the concurrency pinned (min = max, so the autoscaler cannot
// differ from Clawgress's fixed pool), no retries, one browser for the whole
// run (Clawgress's default), no fingerprint injection (Clawgress injects
// none) and no storage written to disk.
//
// Usage: node crawl.js --executable PATH --headless true|shell --proxy URL
//        --urls PREFIX --pages N --warmup N --concurrency N [--sync DIR]
import { PuppeteerCrawler, ProxyConfiguration, Configuration, log } from 'crawlee';
import puppeteer from 'puppeteer-core';
import { performance } from 'node:perf_hooks';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

function args() {
    const out = {};
    const argv = process.argv.slice(2);
    for (let i = 0; i < argv.length; i += 2) {
        if (!argv[i].startsWith('--') || argv[i + 1] === undefined) {
            throw new Error(`crawl.js: expected --name value pairs, got ${argv[i]}`);
        }
        out[argv[i].slice(2)] = argv[i + 1];
    }
    for (const name of ['executable', 'proxy', 'urls', 'pages']) {
        if (!out[name]) throw new Error(`crawl.js: --${name} is required`);
    }
    return out;
}

const opts = args();
const pages = Number(opts.pages);
const warmup = Number(opts.warmup ?? 10);
const concurrency = Number(opts.concurrency ?? 10);
const headless = opts.headless === 'shell' ? 'shell' : true;

log.setLevel(log.LEVELS.WARNING);
const config = new Configuration({ persistStorage: false, purgeOnStart: true });

// Wall time from page opening to the handler's end, per request; and when
// each finished, so the measured batch can be told from the warm-up.
const latencies = [];
let handled = 0;
let ok = 0;
let failed = 0;
let waiter = null;
const settle = () => {
    if (waiter && handled >= waiter.count) waiter.resolve();
};
const handledCount = (count) =>
    new Promise((resolve) => {
        waiter = { count, resolve };
        settle();
    });

class TimedCrawler extends PuppeteerCrawler {
    async _runRequestHandler(context) {
        const start = performance.now();
        try {
            await super._runRequestHandler(context);
        } finally {
            if (context.request.userData.measured) latencies.push(performance.now() - start);
        }
    }
}

const crawler = new TimedCrawler(
    {
        launchContext: {
            launcher: puppeteer,
            useChrome: false,
            launchOptions: {
                executablePath: opts.executable,
                headless,
                // The same switches the Clawgress chromium backend passes.
                args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
            },
        },
        proxyConfiguration: new ProxyConfiguration({ proxyUrls: [opts.proxy] }),
        browserPoolOptions: {
            useFingerprints: false,
            retireBrowserAfterPageCount: 1_000_000,
            maxOpenPagesPerBrowser: concurrency,
        },
        minConcurrency: concurrency,
        maxConcurrency: concurrency,
        maxRequestRetries: 0,
        keepAlive: true,
        navigationTimeoutSecs: 30,
        requestHandlerTimeoutSecs: 30,
        async requestHandler({ page, request }) {
            // The same wait and extraction as the jobs' `.price`, required.
            await page.waitForSelector('.price', { timeout: 5000 });
            const price = await page.$eval('.price', (el) => el.textContent);
            if (price !== '42') throw new Error(`${request.url}: .price is ${JSON.stringify(price)}, not "42"`);
            if (request.userData.measured) ok += 1;
            handled += 1;
            settle();
        },
        failedRequestHandler({ request }, error) {
            if (request.userData.measured) failed += 1;
            if (failed <= 3) console.error(`crawl.js: ${request.url} failed: ${error.message}`);
            handled += 1;
            settle();
        },
    },
    config,
);

const batch = (prefix, count, measured) =>
    Array.from({ length: count }, (_, i) => ({
        url: `${opts.urls}${prefix}${i + 1}`,
        userData: { measured },
    }));

// With --sync DIR, the measured batch is bracketed for the bench script's
// CPU and RSS readings: this writes DIR/warm and waits for DIR/go, then
// writes DIR/done and waits for DIR/finish.
async function handshake(mark, next) {
    if (!opts.sync) return;
    writeFileSync(join(opts.sync, mark), '');
    while (!existsSync(join(opts.sync, next))) await new Promise((r) => setTimeout(r, 20));
}

const running = crawler.run();
// The browser starts with the first request: a warm-up batch, not measured.
await crawler.addRequests(batch('warm', warmup, false));
await handledCount(warmup);
await handshake('warm', 'go');
const start = performance.now();
await crawler.addRequests(batch('p', pages, true));
await handledCount(warmup + pages);
const wall = (performance.now() - start) / 1000;
await handshake('done', 'finish');
await crawler.teardown();
await running;

latencies.sort((a, b) => a - b);
const pct = (q) => (latencies.length ? Math.round(latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]) : 0);
console.log(
    JSON.stringify({
        pages,
        ok,
        failed,
        wall_s: Number(wall.toFixed(3)),
        pages_per_s: Number((ok / wall).toFixed(2)),
        p50_ms: pct(0.5),
        p95_ms: pct(0.95),
    }),
);
