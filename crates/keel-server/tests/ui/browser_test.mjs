// Drives headless Chromium through keel's live view and replay, for tests/ui_browser.rs,
// which runs the cluster and reads what this prints. One line per finding on stdout:
//
//   LIVE leader=<id> term=<t> nodes=<n> leaders=<k>     the page shows the cluster
//   (then waits for a line on stdin: the test killed the leader; the line is the replay
//   page's URL on a node still up)
//   FAILOVER leader=<id> term=<t> leaders=<k> ms=<m>    the page shows the new leader
//   REPLAY nodes=<n> decisions=<d> rule=<first vote's rule>
//
// Usage: node browser_test.mjs LIVE_URL TRACE_FILE SCREENSHOT_DIR
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [liveUrl, traceFile, screenshots] = process.argv.slice(2);
const WAIT_MS = 20000;

const browser = await chromium.launch({
  executablePath: process.env.KEEL_CHROMIUM || "/usr/bin/chromium",
  // As root in a container: no sandbox; no background traffic to hosts this machine cannot reach.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (problem) => {
  console.log(`ERROR ${problem}`);
  await browser.close();
  process.exit(1);
};
const errors = [];

try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(liveUrl);
  // Three nodes drawn, every one up, and exactly one of them leading.
  await page.waitForFunction(() => {
    const nodes = document.querySelectorAll("#cluster .node");
    const up = document.querySelectorAll('#cluster .node[data-up="true"]');
    return nodes.length === 3 && up.length === 3 && document.querySelectorAll('#cluster .node[data-role="leader"]').length === 1;
  }, null, { timeout: WAIT_MS });
  const before = await page.evaluate(() => {
    const leader = document.querySelector('#cluster .node[data-role="leader"]');
    return { leader: leader.dataset.node, term: leader.dataset.term, nodes: document.querySelectorAll("#cluster .node").length, leaders: document.querySelectorAll('#cluster .node[data-role="leader"]').length };
  });
  await page.screenshot({ path: `${screenshots}/live-before.png` });
  console.log(`LIVE leader=${before.leader} term=${before.term} nodes=${before.nodes} leaders=${before.leaders}`);

  const replayUrl = await new Promise((resolve) => createInterface({ input: process.stdin }).once("line", resolve));
  const killedAt = Date.now();
  await page.waitForFunction((old) => {
    const leaders = [...document.querySelectorAll('#cluster .node[data-role="leader"]')];
    return leaders.length === 1 && leaders[0].dataset.node !== old.leader && Number(leaders[0].dataset.term) > Number(old.term);
  }, before, { timeout: WAIT_MS });
  const after = await page.evaluate(() => {
    const leaders = document.querySelectorAll('#cluster .node[data-role="leader"]');
    return { leader: leaders[0].dataset.node, term: leaders[0].dataset.term, leaders: leaders.length };
  });
  await page.waitForSelector('#events li[data-kind="became_leader"], #events li[data-kind="role_changed"]', { timeout: WAIT_MS });
  await page.screenshot({ path: `${screenshots}/live-after-failover.png` });
  console.log(`FAILOVER leader=${after.leader} term=${after.term} leaders=${after.leaders} ms=${Date.now() - killedAt}`);

  await page.goto(replayUrl);
  await page.setInputFiles("#file", traceFile);
  await page.waitForSelector("#cluster .node", { timeout: WAIT_MS });
  // Step to the first vote: the page must say why it went the way it did.
  let rule = "";
  for (let step = 0; step < 200 && !rule; step += 1) {
    await page.click("#next-event");
    rule = await page.evaluate(() => document.querySelector('#why li[data-kind="vote"] .rule')?.textContent || "");
  }
  const replay = await page.evaluate(() => ({ nodes: document.querySelectorAll("#cluster .node").length, decisions: document.querySelectorAll("#events li").length }));
  await page.screenshot({ path: `${screenshots}/replay.png` });
  console.log(`REPLAY nodes=${replay.nodes} decisions=${replay.decisions} rule=${rule}`);
  if (errors.length > 0) await fail(`page errors: ${errors.join("; ")}`);
} catch (error) {
  await fail(String(error).split("\n")[0]);
}
await browser.close();
