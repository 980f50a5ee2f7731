// Replays a keel-sim trace (keel-sim --seed S --trace FILE.json, crates/keel-sim/src/trace.rs)
// with the live view's drawing: step, play, speed, and for each step the decisions the nodes
// took and the rule behind each.
"use strict";

class Replay {
  constructor() {
    this.trace = null;
    this.views = []; // per step: the array of node views after it
    this.position = 0;
    this.playing = null;
    const byId = (id) => document.getElementById(id);
    byId("file").addEventListener("change", (change) => this.loadFile(change.target.files[0]));
    byId("back").addEventListener("click", () => this.show(this.position - 1));
    byId("forward").addEventListener("click", () => this.show(this.position + 1));
    byId("next-event").addEventListener("click", () => this.nextDecision());
    byId("play").addEventListener("click", () => this.togglePlay());
    byId("position").addEventListener("input", (input) => this.show(Number(input.target.value)));
    document.addEventListener("keydown", (key) => {
      if (key.target.tagName === "INPUT" || key.target.tagName === "SELECT") return;
      if (key.key === "ArrowRight") this.show(this.position + 1);
      else if (key.key === "ArrowLeft") this.show(this.position - 1);
      else if (key.key === " ") { key.preventDefault(); this.togglePlay(); }
      else if (key.key === "n") this.nextDecision();
    });
    const url = new URLSearchParams(window.location.search).get("trace");
    if (url) fetch(url).then((answer) => answer.json()).then((trace) => this.load(trace)).catch((error) => this.fail(error));
  }

  fail(error) {
    document.getElementById("summary").textContent = `cannot load the trace: ${error}`;
  }

  async loadFile(file) {
    if (!file) return;
    try {
      this.load(JSON.parse(await file.text()));
    } catch (error) {
      this.fail(error);
    }
  }

  /** Builds every step's views by applying each step's changes to the ones before. */
  load(trace) {
    if (trace.format !== "keel-sim-trace/1") throw new Error(`not a keel-sim trace (format ${trace.format})`);
    this.trace = trace;
    let current = [];
    this.views = trace.steps.map((step) => {
      current = current.slice();
      for (const [id, view] of Object.entries(step.views || {})) {
        current[Number(id) - 1] = Object.assign({ id: Number(id) }, view);
      }
      return current;
    });
    const slider = document.getElementById("position");
    slider.max = String(Math.max(0, trace.steps.length - 1));
    document.getElementById("summary").textContent = `seed ${trace.seed}, ${trace.nodes} nodes, ${trace.steps.length} steps up to ${trace.until_ms} ms — ${trace.outcome}`;
    this.show(0);
  }

  show(position) {
    if (!this.trace || this.trace.steps.length === 0) return;
    this.position = Math.max(0, Math.min(position, this.trace.steps.length - 1));
    const step = this.trace.steps[this.position];
    document.getElementById("position").value = String(this.position);
    document.getElementById("clock").textContent = `${step.at_ms} ms · step ${this.position + 1}/${this.trace.steps.length}`;
    document.getElementById("step").textContent = step.text;
    const views = this.views[this.position].filter(Boolean).map((view) => Object.assign({}, view, { up: view.up !== false }));
    Keel.drawCluster(document.getElementById("cluster"), views);
    const time = (at) => `${String(at).padStart(6, " ")} ms`;
    document.getElementById("why").replaceChildren(...step.events.map((event) => Keel.eventItem(event, time(step.at_ms))));
    const recent = [];
    for (let index = this.position; index >= 0 && recent.length < 60; index -= 1) {
      for (const event of this.trace.steps[index].events.slice().reverse()) {
        if (event.kind !== "role_changed") recent.push(Keel.eventItem(event, time(this.trace.steps[index].at_ms)));
      }
    }
    document.getElementById("events").replaceChildren(...recent.slice(0, 60));
  }

  nextDecision() {
    if (!this.trace) return;
    for (let index = this.position + 1; index < this.trace.steps.length; index += 1) {
      if (this.trace.steps[index].events.some((event) => event.kind !== "role_changed")) return this.show(index);
    }
  }

  togglePlay() {
    const button = document.getElementById("play");
    if (this.playing) {
      window.clearTimeout(this.playing);
      this.playing = null;
      button.textContent = "▶ play";
      return;
    }
    button.textContent = "⏸ pause";
    const advance = () => {
      if (!this.trace || this.position >= this.trace.steps.length - 1) {
        this.playing = null;
        button.textContent = "▶ play";
        return;
      }
      const speed = Number(document.getElementById("speed").value);
      const gap = this.trace.steps[this.position + 1].at_ms - this.trace.steps[this.position].at_ms;
      this.show(this.position + 1);
      this.playing = window.setTimeout(advance, Math.min(1000, Math.max(15, gap / speed)));
    };
    this.playing = window.setTimeout(advance, 0);
  }
}

new Replay();
