// keel's live view of a Raft cluster (/ui) and the drawing the replay (/ui/replay) shares.
//
// The page asks the node that served it for the members (GET /v1/cluster), then reads every
// member directly: its status and log tail every POLL_MS, the leader's view of its followers,
// and each node's event stream (GET /v1/events, server-sent events). So when the node that
// served the page is killed, the page goes on with the others. No framework, no build step:
// this file is compiled into the keel binary.
"use strict";

const POLL_MS = 250;
const MEMBERS_MS = 2000;
const FETCH_TIMEOUT_MS = 800;
const LOG_TAIL = 20;
const EVENTS_SHOWN = 200;

// ----- drawing, shared with the replay ------------------------------------------------------

const Keel = {
  /** A stable colour per term, so one term's entries look alike on every node. */
  termColour(term) {
    return `hsl(${(term * 67) % 360}, 62%, 78%)`;
  },

  element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (name === "class") node.className = value;
      else if (name === "style") node.setAttribute("style", value);
      else if (name.startsWith("data-")) node.setAttribute(name, value);
      else node[name] = value;
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  },

  /**
   * One card per node. Each view: {id, up, role, term, leader, voted_for, commit, applied,
   * last_index, snapshot_index, log: [{index, term, kind}]}; `up` false draws it down.
   */
  drawCluster(container, views) {
    const cards = views.map((view) => Keel.drawNode(view));
    container.replaceChildren(...cards);
    const leaders = views.filter((view) => view.up && view.role === "leader");
    const top = leaders.sort((a, b) => b.term - a.term)[0];
    container.dataset.leader = top ? String(top.id) : "";
    container.dataset.term = String(Math.max(0, ...views.filter((view) => view.up).map((view) => view.term)));
  },

  drawNode(view) {
    const e = Keel.element;
    const card = e("article", { class: "node", "data-node": String(view.id), "data-up": String(view.up), "data-role": view.up ? view.role : "down", "data-term": String(view.term ?? "") });
    if (!view.up) {
      card.append(e("div", { class: "node-head" }, e("span", { class: "node-name" }, `node ${view.id}`), e("span", { class: "role" }, "down"), e("span", { class: "facts" }, view.reason || "not answering")));
      return card;
    }
    const leader = view.role === "leader" ? "" : view.leader ? `leader: node ${view.leader}` : "no leader known";
    const vote = view.voted_for ? `voted for node ${view.voted_for}` : "no vote this term";
    card.append(
      e("div", { class: "node-head" },
        e("span", { class: "node-name" }, `node ${view.id}`),
        e("span", { class: "role" }, view.role.replace("_", "-")),
        e("span", {}, `term ${view.term}`),
        e("span", { class: "facts" }, [leader, vote, `commit ${view.commit}`, `applied ${view.applied}`, `last ${view.last_index}`].filter(Boolean).join(" · "))),
      Keel.drawLog(view));
    return card;
  },

  drawLog(view) {
    const e = Keel.element;
    const row = e("div", { class: "log", "data-log": String(view.id) });
    const entries = view.log || [];
    if (view.snapshot_index > 0 && (entries.length === 0 || entries[0].index === view.snapshot_index + 1)) {
      const snapshot = e("div", { class: "entry snapshot", title: `snapshot up to ${view.snapshot_index} (§7)` }, `≤${view.snapshot_index}`);
      // Commit and applied index inside the snapshot: the marker sits on it.
      if (view.commit <= view.snapshot_index) snapshot.append(e("span", { class: "marker commit" }, "C"));
      if (view.applied <= view.snapshot_index) snapshot.append(e("span", { class: "marker applied" }, "A"));
      row.append(snapshot);
    }
    for (const entry of entries) {
      const classes = ["entry", entry.kind || "command"];
      if (entry.index > view.commit) classes.push("uncommitted");
      const box = e("div", { class: classes.join(" "), style: `background:${Keel.termColour(entry.term)}`, title: `index ${entry.index}, term ${entry.term}, ${entry.kind || "command"}` },
        e("span", { class: "term" }, String(entry.term)), e("span", {}, String(entry.index)));
      if (entry.index === view.commit) box.append(e("span", { class: "marker commit" }, "C"));
      if (entry.index === view.applied) box.append(e("span", { class: "marker applied" }, "A"));
      row.append(box);
    }
    return row;
  },

  /** Words for one event (keel-node's NodeEvent as JSON), and a class for its line. */
  describeEvent(event) {
    const n = (id) => `node ${id}`;
    switch (event.kind) {
      case "election_started":
        return [`${n(event.node)} starts ${event.pre_vote ? "a pre-vote for" : "an election for"} term ${event.term}${event.leadership_transfer ? " (leadership transfer)" : ""}`, ""];
      case "vote":
        return [`${n(event.node)} ${event.granted ? "grants" : "refuses"} its ${event.pre_vote ? "pre-vote" : "vote"} to ${n(event.candidate)} for term ${event.term}`, event.granted ? "" : "refused", event.rule];
      case "vote_ignored":
        return [`${n(event.node)} ignores ${n(event.candidate)}'s request for term ${event.term}`, "refused", event.rule];
      case "became_leader":
        return [`${n(event.node)} becomes LEADER of term ${event.term} and appends a no-op (§8)`, "leader"];
      case "stepped_down":
        return [`${n(event.node)} stops leading term ${event.term} (${String(event.reason).replace("_", " ")})`, "refused"];
      case "role_changed":
        return [`${n(event.node)} is ${event.role.replace("_", "-")} in term ${event.term}${event.leader ? `, leader ${n(event.leader)}` : ""}`, event.role === "leader" ? "leader" : ""];
      case "snapshot_taken":
        return [`${n(event.node)} took a snapshot up to ${event.index} (${event.bytes} bytes) and compacted its log (§7)`, ""];
      case "snapshot_sent":
        return [`${n(event.node)} finished sending its snapshot up to ${event.index} to ${n(event.to)}`, ""];
      case "snapshot_installed":
        return [`${n(event.node)} installed the leader's snapshot up to ${event.index}`, ""];
      case "configuration_changed":
        return [`${n(event.node)}: configuration now ${event.configuration} (from index ${event.index})`, ""];
      case "lagged":
        return [`${n(event.node)}: ${event.missed} events missed (the page fell behind)`, "refused"];
      default:
        return [`${n(event.node)}: ${event.kind}`, ""];
    }
  },

  eventItem(event, time) {
    const [text, kind, rule] = Keel.describeEvent(event);
    const e = Keel.element;
    return e("li", { class: kind || "", "data-kind": event.kind }, e("span", { class: "time" }, time), text, rule ? e("span", { class: "rule" }, rule) : null);
  },
};

// ----- the live view -------------------------------------------------------------------------

class LiveView {
  constructor() {
    this.scheme = window.location.protocol.replace(":", "");
    this.members = new Map(); // id -> address
    this.views = new Map(); // id -> view
    this.progress = null; // the leader's /v1/members
    this.sources = new Map(); // id -> EventSource
    this.lastSeq = new Map(); // id -> last event seq shown
    this.tokenInput = document.getElementById("token");
    this.tokenInput.value = new URLSearchParams(window.location.search).get("token") || window.localStorage.getItem("keel-token") || "";
    this.tokenInput.addEventListener("change", () => {
      window.localStorage.setItem("keel-token", this.tokenInput.value);
      for (const source of this.sources.values()) source.close();
      this.sources.clear();
    });
  }

  url(address, path) {
    return `${this.scheme}://${address}${path}`;
  }

  async fetchJson(address, path) {
    const abort = new AbortController();
    const timer = window.setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    const headers = this.tokenInput.value ? { authorization: `Bearer ${this.tokenInput.value}` } : {};
    try {
      const answer = await fetch(this.url(address, path), { signal: abort.signal, headers, cache: "no-store" });
      if (!answer.ok) throw new Error(`${path}: ${answer.status}`);
      return await answer.json();
    } finally {
      window.clearTimeout(timer);
    }
  }

  async start() {
    await this.refreshMembers(window.location.host);
    window.setInterval(() => this.refreshMembers(), MEMBERS_MS);
    window.setInterval(() => this.poll(), POLL_MS);
    this.poll();
  }

  /** The members, as any node that answers says (first the one that served the page). */
  async refreshMembers(first) {
    const candidates = [first, ...this.members.values()].filter(Boolean);
    for (const address of candidates) {
      try {
        const cluster = await this.fetchJson(address, "/v1/cluster");
        for (const member of cluster.members) {
          if (member.address) this.members.set(member.id, member.address);
        }
        for (const id of [...this.members.keys()]) {
          if (!cluster.members.some((member) => member.id === id)) this.forget(id);
        }
        this.clusterId = cluster.cluster_id;
        return;
      } catch (error) {
        // Ask the next one.
      }
    }
  }

  forget(id) {
    this.members.delete(id);
    this.views.delete(id);
    this.sources.get(id)?.close();
    this.sources.delete(id);
  }

  async poll() {
    await Promise.all([...this.members.entries()].map(([id, address]) => this.pollNode(id, address)));
    const leader = [...this.views.values()].filter((view) => view.up && view.role === "leader").sort((a, b) => b.term - a.term)[0];
    this.progress = null;
    if (leader) {
      try {
        this.progress = await this.fetchJson(this.members.get(leader.id), "/v1/members");
      } catch (error) {
        this.progress = null;
      }
    }
    this.draw();
  }

  async pollNode(id, address) {
    try {
      const [status, log] = await Promise.all([this.fetchJson(address, "/v1/status"), this.fetchJson(address, `/v1/log?tail=${LOG_TAIL}`)]);
      this.views.set(id, {
        id, up: !status.stopped && !status.removed, reason: status.stopped || (status.removed ? "removed from the cluster" : ""),
        role: status.role, term: status.term, leader: status.leader_id, voted_for: status.voted_for,
        commit: status.commit_index, applied: status.applied_index, last_index: status.last_log_index,
        snapshot_index: status.snapshot_index, log: log.entries,
      });
      this.listen(id, address);
    } catch (error) {
      const previous = this.views.get(id);
      this.views.set(id, { id, up: false, term: previous ? previous.term : 0, reason: "not answering" });
    }
  }

  /** One event stream per node; the browser reconnects it by itself. */
  listen(id, address) {
    if (this.sources.has(id)) return;
    const token = this.tokenInput.value ? `?access_token=${encodeURIComponent(this.tokenInput.value)}` : "";
    const source = new EventSource(this.url(address, `/v1/events${token}`));
    source.addEventListener("keel", (message) => this.onEvent(JSON.parse(message.data)));
    this.sources.set(id, source);
  }

  onEvent(event) {
    if (event.kind === "hello") {
      this.lastSeq.set(event.node, 0);
      return;
    }
    if ((this.lastSeq.get(event.node) ?? -1) >= event.seq) return;
    this.lastSeq.set(event.node, event.seq);
    const list = document.getElementById("events");
    const time = new Date(event.at_ms).toISOString().slice(11, 23);
    list.prepend(Keel.eventItem(event, time));
    while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
  }

  draw() {
    const views = [...this.views.values()].sort((a, b) => a.id - b.id);
    const cluster = document.getElementById("cluster");
    Keel.drawCluster(cluster, views);
    const up = views.filter((view) => view.up).length;
    const leader = cluster.dataset.leader;
    document.getElementById("summary").textContent =
      `${this.clusterId || "cluster"}: ${views.length} members, ${up} answering · term ${cluster.dataset.term} · ${leader ? `leader node ${leader}` : "no leader"}`;
    this.drawProgress();
  }

  drawProgress() {
    const e = Keel.element;
    const box = document.getElementById("progress");
    if (!this.progress) {
      box.replaceChildren(e("p", { class: "muted" }, "no leader known"));
      return;
    }
    const last = this.progress.last_log_index || 1;
    const rows = this.progress.members.map((member) =>
      e("tr", { "data-follower": String(member.id) },
        e("td", {}, `node ${member.id}${member.is_leader ? " (leader)" : ""}`),
        e("td", {}, member.role),
        e("td", {}, String(member.match_index)),
        e("td", {}, String(member.lag)),
        e("td", {}, e("div", { class: "bar", title: `${member.match_index} of ${this.progress.last_log_index}` }, e("div", { style: `width:${Math.min(100, (100 * member.match_index) / last)}%` }))),
        e("td", {}, member.active ? "active" : "silent")));
    box.replaceChildren(e("table", {}, e("tr", {}, ["member", "role", "match", "lag", "", ""].map((title) => e("th", {}, title))), rows));
  }
}

if (document.body.dataset.page === "live") {
  new LiveView().start();
}
