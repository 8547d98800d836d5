// The corral dashboard: one page, no build step. Preact components written with htm's
// tagged templates (no JSX to compile, no eval); every call goes through POST api/METHOD
// with the session's CSRF token. What the daemon pushes comes as Server-Sent Events on
// stream/METHOD (EventSource, the session's cookie): the fleet as it changes
// (agents.watch: a snapshot, then each replica's state change at once, and every
// replica's figures each second), the runtime figures each second (stats.watch: the live
// charts' points), an agent's log (logs.follow), a task's live output (tasks.stream) and
// the bus's corral.* events, by which a workflow run's view knows when to read its run
// again (events.follow). The lists that
// are not a stream (tasks, runs, MCP servers, the audit log) are reloaded every second
// while shown; the tenants'
// quotas and use (tenants.list) and a cluster's nodes (nodes.list), which no stream
// carries, are read again as each stats.watch sample comes while the fleet is shown.
import { Component, h, render } from "./vendor/preact.mjs";
import htm from "./vendor/htm.mjs";

const html = htm.bind(h);
const POLL_MS = 1000;
const LOG_LINES = 500; // of an agent's log, kept in the page
const REFUSALS_SHOWN = 50; // of an agent's boundary.refused events, kept in the page
const KEEP_POINTS = 7 * 24 * 3600; // a week of one-second points, at most

const session = { csrf: "", methods: [], streams: [] };

class CallError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function call(method, params = {}) {
  const r = await fetch(`api/${method}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf },
    body: JSON.stringify(params),
  });
  const body = await r.json();
  if (!r.ok) throw new CallError(r.status, body.detail || r.statusText);
  return body;
}

// A stream of the daemon's, followed while `onEvent` is wanted: reconnected by the browser
// (with Last-Event-ID: the fleet resumes where it was), or after a pause when the
// browser gives up on it; `onState` is told "live", "reconnecting" or "closed", and the
// stream's method.
function follow(method, params, handlers, onState) {
  const query = new URLSearchParams(params).toString();
  let es = null;
  let timer = null;
  let closed = false;
  const open = () => {
    es = new EventSource(`stream/${method}${query ? `?${query}` : ""}`);
    es.onopen = () => onState && onState("live", method);
    es.onerror = () => {
      if (closed) return;
      if (es.readyState === EventSource.CLOSED) {
        // refused (a session that ended, a cap on streams): ask again later
        onState && onState("closed", method);
        timer = setTimeout(open, 2 * POLL_MS);
      } else {
        onState && onState("reconnecting", method);
      }
    };
    for (const [name, fn] of Object.entries(handlers)) {
      es.addEventListener(name, (e) => {
        if (name in window.corralLive) window.corralLive[name] += 1;
        fn(JSON.parse(e.data));
      });
    }
  };
  open();
  return () => {
    closed = true;
    clearTimeout(timer);
    if (es) es.close();
  };
}

// what the streams brought, counted: the browser tests read them
window.corralLive = { "agents.snapshot": 0, "agents.transition": 0, "agents.roster": 0,
  "agents.sample": 0, "stats.sample": 0, "events.event": 0, "tasks.output": 0,
  "approvals.ask": 0 };

// The fleet as agents.watch tells it: every replica's row as agents.status shows it.
class FleetModel {
  constructor() {
    this.rows = [];
    this.index = new Map(); // "name#replica" -> position in rows
    this.rosters = {}; // agent -> how many times its list of replicas changed
  }
  reindex() {
    this.index = new Map(this.rows.map((r, i) => [`${r.name}#${r.replica}`, i]));
  }
  snapshot(s) {
    this.rows = s.replicas;
    this.reindex();
  }
  transition(c) {
    // a change of the process that holds the replica's place (a rollout's other process,
    // or a replica scaled away, holds none: its row stays as it is)
    if (!c.row) return;
    const i = this.index.get(`${c.agent}#${c.replica}`);
    if (i !== undefined) this.rows[i] = c.row;
  }
  roster(r) {
    const at = this.rows.findIndex((x) => x.name === r.agent);
    const rest = this.rows.filter((x) => x.name !== r.agent);
    const where = at < 0 ? rest.length : at;
    this.rows = [...rest.slice(0, where), ...r.replicas, ...rest.slice(where)];
    this.rosters[r.agent] = (this.rosters[r.agent] || 0) + 1;
    this.reindex();
  }
  sample(s) {
    for (const [agent, replica, uptime, cpu, rss, fds, tasks, waiting] of s.replicas) {
      const i = this.index.get(`${agent}#${replica}`);
      if (i === undefined) continue;
      this.rows[i] = { ...this.rows[i], uptime, cpu_percent: cpu, rss_bytes: rss,
        open_fds: fds, tasks_running: tasks, waiting_for_person: waiting ?? 0 };
    }
  }
}

// -- formatting ---------------------------------------------------------------------------
function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}
// an agent's reported usage (usage/report) and its budgets' windows (docs/elastic.md)
function UsageLine({ u }) {
  const n = (x) => Math.round(x).toLocaleString("en-US");
  const models = Object.keys(u.models).sort().join(", ");
  // one string: htm drops the spaces around a line break next to a value
  const text = `Usage since the daemon started: ${n(u.input_tokens + u.output_tokens)} ` +
    `tokens (${n(u.input_tokens)} in, ${n(u.output_tokens)} out), ` +
    `$${u.cost_usd.toFixed(4)}${models && ` (${models})`}; last minute ` +
    `${n(u.tokens_last_minute)} tokens, last day ${n(u.tokens_last_day)} tokens, ` +
    `$${u.cost_usd_last_day.toFixed(4)}.`;
  return html`<p class="note" id="usage">${text}${u.waiting &&
    html` <strong id="usage-waiting">${`Tasks wait: ${u.waiting}`}</strong>`}</p>`;
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}
function stamp(t) {
  return t ? new Date(t * 1000).toLocaleString() : "–";
}
const SERVING = new Set(["ready", "busy", "idle"]); // states a replica can be paused in
const State = ({ s }) => html`<span class=${`state state-${s}`}>${s}</span>`;

// Start, stop and restart an agent (`target` NAME) or one replica (NAME#N), as
// `corral start|stop|restart` and the REST API's POST /agents/NAME/start|stop|restart do
// (the three take NAME#N). `act(method, params)` makes the call and shows its error.
function Lifecycle({ target, act, busy }) {
  const names = [target];
  return html`<span class="actions">
    <button class="start" disabled=${busy} onClick=${() => act("agents.start", { names })}>Start</button>
    <button class="stop" disabled=${busy} onClick=${() => act("agents.stop", { names })}>Stop</button>
    <button class="restart" disabled=${busy} onClick=${() => act("agents.restart", { names })}>Restart</button>
  </span>`;
}

// -- a view that polls its data every second while it is shown ------------------------------
class Polled extends Component {
  componentDidMount() {
    this.gen = 0;
    this.tick(this.gen);
  }
  componentWillUnmount() {
    this.gen = -1;
    clearTimeout(this.timer);
  }
  componentDidUpdate(prevProps, prevState) {
    if (this.key(prevProps, prevState) !== this.key(this.props, this.state)) {
      clearTimeout(this.timer);
      this.gen += 1;
      this.setState({ data: null, error: null });
      this.tick(this.gen);
    }
  }
  key(props) {
    return "";
  }
  // whether the view loads at all for its key
  polls() {
    return true;
  }
  // milliseconds to the next load after `data` (null after an error)
  next(data) {
    return POLL_MS;
  }
  // one loop per view and key: an answer for an older key is dropped
  async tick(gen) {
    if (!this.polls()) return;
    let data = null;
    let error = null;
    try {
      data = await this.load();
    } catch (e) {
      error = e.message;
    }
    if (gen !== this.gen) return;
    this.setState(error ? { error } : { data, error: null });
    this.timer = setTimeout(() => this.tick(gen), this.next(data));
  }
  render() {
    const { data, error } = this.state;
    return html`${error && html`<div class="error">${error}</div>`}
      ${data ? this.show(data) : !error && html`<p class="note">Loading…</p>`}`;
  }
}

// -- the fleet ------------------------------------------------------------------------------
// with [cluster]: the nodes as Redis has them (nodes.list), alive while their key is; the
// last answer stays shown under the error of a read that failed (Redis away)
function Nodes({ nodes, error }) {
  if (!nodes && !error) return null;
  const now = Date.now() / 1000;
  return html`<section><h2>Nodes</h2>
    ${error && html`<div class="error" id="nodes-error">${`The cluster's nodes cannot be read: ${error}`}${nodes ? " (the table is the last read)" : ""}</div>`}
    ${nodes && html`<table id="nodes">
      <thead><tr><th>Node</th><th>State</th><th class="num">Incarnation</th>
        <th class="num">Load</th><th class="num">Capacity</th><th class="num">Last beat</th>
        <th>Agents</th></tr></thead>
      <tbody>${nodes.map((n) => html`<tr data-node=${n.node}>
        <td>${n.node}</td><td><${State} s=${n.alive ? (n.draining ? "draining" : "alive") : "dead"} /></td>
        <td class="num">${n.incarnation}</td><td class="num">${n.load}</td>
        <td class="num">${n.capacity}</td><td class="num">${duration(now - n.last_beat)} ago</td>
        <td>${n.agents.map((a) => (n.placed || []).includes(a) ? `${a}*` : a).join(", ")}</td>
      </tr>`)}</tbody>
    </table>`}</section>`;
}

// -- tenants (docs/tenants.md) ----------------------------------------------------------------
// the quotas shown beside a use, as `corral tenants` shows them; the others are listed
const BESIDE = [["agents", "max_agents"], ["replicas", "max_replicas"], ["queued", "max_queue"],
  ["running", "max_concurrent_tasks"], ["tokens_last_minute", "tokens_per_minute"]];
const BESIDE_KEYS = new Set(BESIDE.map(([, q]) => q));

function beside(used, quota) {
  const n = (x) => +x.toFixed(1);
  return quota ? `${n(used)} / ${n(quota)}` : `${n(used)}`;
}

// whether the tenants are worth a table: some tenant besides `default`
function tenanted(tenants) {
  return !!tenants && tenants.some((t) => t.name !== "default");
}

// each tenant's quotas beside its use (tenants.list: a tenant's session sees its own)
function Tenants({ tenants, error }) {
  if (!error && !tenanted(tenants)) return null;
  return html`<section>
    <h2>Tenants</h2>
    ${error && html`<div class="error" id="tenants-error">${`The tenants cannot be read: ${error}`}</div>`}
    ${tenants && html`<table id="tenants">
      <thead><tr><th>Tenant</th><th class="num">Agents</th><th class="num">Replicas</th>
        <th class="num">Queued</th><th class="num">Running</th><th class="num">Tokens/min</th>
        <th class="num">OOM kills</th><th>Other quotas</th><th>Declared</th></tr></thead>
      <tbody>${tenants.map((t) => html`<tr data-tenant=${t.name}>
        <td><a href=${`#/fleet/${encodeURIComponent(t.name)}`}>${t.name}</a></td>
        ${BESIDE.map(([use, quota]) => html`<td class="num" data-use=${use}>${beside(t.use[use], t.quotas[quota])}</td>`)}
        <td class="num">${t.use.oom_kills}</td>
        <td>${Object.entries(t.quotas).filter(([k]) => !BESIDE_KEYS.has(k))
          .map(([k, v]) => `${k}=${v}`).join(", ") || "–"}</td>
        <td>${t.origin}${t.revision ? ` (revision ${t.revision})` : ""}</td></tr>`)}</tbody>
    </table>`}
  </section>`;
}

// A replica's state as shown: a one-shot that exited cleanly (`done`, as `corral status`
// says it) is no failure, whatever its machine's state word; a busy one whose every task
// waits for a person (agents.sample's waiting_for_person) is waiting, not working
const shown = (a) => (a.done ? "done"
  : a.state === "busy" && a.waiting_for_person > 0 && a.waiting_for_person >= a.tasks_running ? "waiting"
    : a.state);

const ReplicaRow = ({ a, tenant, act, busy }) => html`<tr data-agent=${a.name} data-replica=${a.replica}
    data-tenant=${tenant ?? ""}>
  <td class="replica-of wrap">${a.name}</td>
  <td class="num">${a.replica}</td><td><${State} s=${shown(a)} /></td>
  <td class="num">${a.pid ?? "–"}</td><td class="num">${duration(a.uptime)}</td>
  <td class="num">${a.restarts}</td><td class="num">${a.cpu_percent.toFixed(1)} %</td>
  <td class="num">${bytes(a.rss_bytes)}</td><td class="num">${a.tasks_running}</td>
  <td class="wrap">${a.last_exit ?? ""}</td>
  <td class="acts"><${Lifecycle} target=${`${a.name}#${a.replica}`} act=${act} busy=${busy} /></td></tr>`;

// What an agent's replicas are doing, in a few words: "2 ready", "1 ready, 1 starting";
// with none, the elastic state the stats.watch sample gives (asleep: scaled to zero, a
// task wakes it; waking), else "no replicas" (scaled to 0)
function stateOf(replicas, stats) {
  if (!replicas.length) return stats?.elastic && stats.elastic !== "awake" ? stats.elastic : "no replicas";
  const counts = new Map();
  for (const r of replicas) counts.set(shown(r), (counts.get(shown(r)) || 0) + 1);
  return [...counts].map(([st, n]) => `${n} ${st}`).join(", ");
}

// An agent's row: its replicas summed, its state in words, its actions. An agent with
// no replica has this row alone: asleep, or scaled to 0, it is still there.
function SummaryRow({ name, replicas, stats, tenant, act, busy }) {
  const sum = (k) => replicas.reduce((n, r) => n + r[k], 0);
  const words = stateOf(replicas, stats);
  // a single state colours the badge as a replica's would; replicas that all serve (one
  // idle after a task, one ready) are a serving agent, coloured so, not as a warning
  const one = replicas.length ? new Set(replicas.map(shown)) : null;
  const badge = one === null ? words : one.size === 1 ? [...one][0]
    : [...one].every((s) => SERVING.has(s) || s === "waiting") ? "serving" : "mixed";
  return html`<tr class="summary" data-summary=${name} data-tenant=${tenant ?? ""}>
    <td class="wrap"><a href=${`#/agent/${name}`}>${name}</a></td>
    <td class="num">${replicas.length}</td>
    <td><span class=${`state state-${badge.replace(/ /g, "_")}`}>${
      badge === "serving" ? `${replicas.length} serving (${words})` : words}</span></td>
    <td></td><td></td><td class="num">${sum("restarts")}</td>
    <td class="num">${sum("cpu_percent").toFixed(1)} %</td>
    <td class="num">${bytes(sum("rss_bytes"))}</td><td class="num">${sum("tasks_running")}</td>
    <td></td><td class="acts"><${Lifecycle} target=${name} act=${act} busy=${busy} /></td></tr>`;
}

// Every agent the page knows of: those with replicas (the fleet's stream) and those
// without (the stats.watch sample names every agent, an asleep one too), by name.
function agentNames(rows, agentStats) {
  return [...new Set([...rows.map((a) => a.name), ...Object.keys(agentStats || {})])].sort();
}

// The fleet, grouped by agent: a summary row each, then its replicas; with tenants,
// filtered to one (`#/fleet/TENANT`) or grouped by tenant too. An agent's tenant is the
// stats.watch sample's (`tenantOf`): an agent no sample named yet is in no tenant's filter
// or group until the next one.
function Fleet({ status, nodes, nodesError, tenants, tenantsError, tenantOf, agentStats, only,
  grouped, setGrouped, act, busy }) {
  if (!status) return html`<p class="note">Loading…</p>`;
  const withTenants = tenanted(tenants);
  const allNames = agentNames(status.agents, agentStats);
  const names = only ? allNames.filter((n) => tenantOf[n] === only) : allNames;
  const rows = status.agents.filter((a) => names.includes(a.name));
  const agentRows = (list) => list.map((n) => {
    const of = rows.filter((a) => a.name === n);
    return html`<${SummaryRow} name=${n} replicas=${of} stats=${agentStats?.[n]}
        tenant=${tenantOf[n]} act=${act} busy=${busy} />
      ${of.map((a) => html`<${ReplicaRow} a=${a} tenant=${tenantOf[a.name]} act=${act} busy=${busy} />`)}`;
  });
  let body = agentRows(names);
  if (withTenants && grouped && !only) {
    const groups = [...new Set(names.map((n) => tenantOf[n] ?? ""))].sort();
    body = groups.map((t) => {
      const of = rows.filter((a) => (tenantOf[a.name] ?? "") === t);
      return html`<tr class="group" data-group=${t}><th colspan="11">${t
        ? `tenant ${t}: ${of.length} replica${of.length === 1 ? "" : "s"}` : "tenant not known yet"}</th></tr>
        ${agentRows(names.filter((n) => (tenantOf[n] ?? "") === t))}`;
    });
  }
  const pick = (e) => { location.hash = e.target.value ? `#/fleet/${encodeURIComponent(e.target.value)}` : "#/fleet"; };
  return html`<${Tenants} tenants=${tenants} error=${tenantsError} />
  <${Nodes} nodes=${nodes} error=${nodesError} />
  <section>
    <h2>Agents</h2>
    ${(withTenants || only) && html`<div class="controls">
      <label>Tenant <select id="tenant-filter" onChange=${pick}>
        <option value="">every tenant</option>
        ${(tenants || []).map((t) => html`<option value=${t.name} selected=${t.name === only}>${t.name}</option>`)}
      </select></label>
      <label><input type="checkbox" id="group-by-tenant" checked=${grouped} disabled=${!!only}
        onChange=${(e) => setGrouped(e.target.checked)} /> group by tenant</label>
    </div>`}
    <table id="fleet">
      <thead><tr><th>Agent</th><th class="num">Replica</th><th>State</th><th class="num">PID</th>
        <th class="num">Uptime</th><th class="num">Restarts</th><th class="num">CPU</th>
        <th class="num">RSS</th><th class="num">Tasks</th><th>Last exit</th><th></th></tr></thead>
      <tbody>${body}</tbody>
    </table>
    ${names.length === 0 && html`<p class="note" id="no-agents">${only ? `No agents in tenant ${only}.` : "No agents."}</p>`}
  </section>
  ${session.methods.includes("agents.add") && html`<${AddAgent} act=${act} busy=${busy} />`}`;
}

// A new agent from a form: its name, command and replicas, and any other keys of an
// [agents.NAME] table as JSON (agents.add: POST /api/v1/agents takes the same tables).
// The daemon checks the table as it checks the config file's; its refusal is shown.
class AddAgent extends Component {
  constructor() {
    super();
    this.state = { name: "", command: "", replicas: 1, extra: "", error: null };
  }
  async submit(e) {
    e.preventDefault();
    const { name, command, replicas, extra } = this.state;
    let table;
    try {
      table = extra.trim() ? JSON.parse(extra) : {};
    } catch (err) {
      this.setState({ error: `the other keys are not JSON: ${err.message}` });
      return;
    }
    if (typeof table !== "object" || table === null || Array.isArray(table)) {
      this.setState({ error: "the other keys are a JSON object: {\"key\": value, ...}" });
      return;
    }
    const done = await this.props.act("agents.add", { agents: { [name]: { command, replicas, ...table } } });
    if (done) this.setState({ name: "", command: "", replicas: 1, extra: "", error: null });
  }
  render() {
    const { name, command, replicas, extra, error } = this.state;
    const set = (k) => (e) => this.setState({ [k]: k === "replicas" ? Number(e.target.value) : e.target.value, error: null });
    return html`<section>
      <h2>Add an agent</h2>
      ${error && html`<div class="error" id="add-error">${error}</div>`}
      <form id="add-agent" class="controls" onSubmit=${(e) => this.submit(e)}>
        <label>Name <input id="add-name" required value=${name} onInput=${set("name")} /></label>
        <label>Command <input id="add-command" class="wide" required value=${command}
          placeholder="python3 -m my_agent" onInput=${set("command")} /></label>
        <label>Replicas <input id="add-replicas" class="replicas" type="number" min="0"
          value=${replicas} onInput=${set("replicas")} /></label>
        <label class="block">Other keys of its table, as JSON (optional)
          <textarea id="add-extra" rows="2" placeholder='{"cwd": "/srv/agent", "env": {"MODE": "prod"}}'
            value=${extra} onInput=${set("extra")}></textarea></label>
        <button class="primary" id="add-submit" type="submit" disabled=${this.props.busy}>Add</button>
      </form>
    </section>`;
  }
}

// -- an agent -------------------------------------------------------------------------------
// Its replicas are the fleet's rows (live); its spec and revisions are loaded when the view
// opens and again when its list of replicas changes (scaled, rolled back, reloaded) or an
// action of the page's ends; its log is followed (logs.follow).
class Agent extends Component {
  componentDidMount() {
    this.open();
  }
  componentWillUnmount() {
    this.close();
  }
  componentDidUpdate(prev) {
    if (prev.name !== this.props.name) {
      this.close();
      this.setState({ data: null, error: null, lines: [], replicas: undefined, removing: false });
      this.open();
    } else if (prev.roster !== this.props.roster && !this.gone) {
      this.reload();
    }
    // the log pane opens at its newest line and follows new ones, unless the reader has
    // scrolled up (then it stays where they are until they scroll back to the bottom)
    if (this.log && this.stick) this.log.scrollTop = this.log.scrollHeight;
  }
  logScrolled() {
    const el = this.log;
    this.stick = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
  }
  open() {
    this.gen = (this.gen || 0) + 1;
    this.stick = true;
    this.gone = false;
    this.setState({ lines: [] });
    this.reload();
    const name = this.props.name;
    this.unfollow = follow("logs.follow", { names: name, lines: 100 }, {
      "logs.lines": (p) => this.setState((st) => ({ lines: [...(st.lines || []), ...p.lines].slice(-LOG_LINES) })),
      "logs.missed": (p) => this.setState((st) => ({
        lines: [...(st.lines || []), [Date.now() / 1000, name, "-", 0, "corral", `${p.count} lines missed`]].slice(-LOG_LINES),
      })),
    });
    // what corral's boundary refused it (boundary.refused), the newest REFUSALS_SHOWN
    this.setState({ refusals: [] });
    if (session.streams.includes("events.follow") && session.scopes.includes("events")) {
      this.unrefused = follow("events.follow", { pattern: "boundary.refused" }, {
        "events.event": (e) => e.data && e.data.agent === name && this.setState((st) => ({
          refusals: [...(st.refusals || []), e.data].slice(-REFUSALS_SHOWN),
        })),
      });
    }
  }
  close() {
    this.gen += 1;
    if (this.unfollow) this.unfollow();
    if (this.unrefused) this.unrefused();
    this.unfollow = this.unrefused = null;
  }
  async reload() {
    const gen = this.gen;
    const name = this.props.name;
    try {
      const [spec, history] = await Promise.all([
        call("agents.describe", { name }),
        call("agents.history", { name, limit: 20 }),
      ]);
      if (gen === this.gen) this.setState({ data: { spec, history }, error: null });
    } catch (e) {
      if (gen === this.gen) this.setState({ error: e.message });
    }
  }
  async act(method, params) {
    this.setState({ busy: true, error: null });
    let answer = null;
    try {
      answer = await call(method, params);
    } catch (e) {
      this.setState({ error: e.message });
    }
    this.setState({ busy: false });
    if (!this.gone && method !== "tasks.submit") this.reload();
    return answer;
  }
  async remove() {
    this.gone = true; // its roster's last change is its removal: nothing to reload
    if (await this.act("agents.remove", { names: [this.props.name] })) location.hash = "#/fleet";
    else this.gone = false;
  }
  // a task with the editor's input (JSON), detached: its view shows it run and its output
  async run() {
    let input;
    try {
      input = JSON.parse(this.state.input ?? "null");
    } catch (e) {
      this.setState({ error: `the task's input is not JSON: ${e.message}` });
      return;
    }
    const accepted = await this.act("tasks.submit", { agent: this.props.name, input });
    if (accepted) location.hash = `#/task/${accepted.task_id}`;
  }
  render() {
    const { data, error } = this.state;
    return html`${error && html`<div class="error">${error}</div>`}
      ${data ? this.show(data) : !error && html`<p class="note">Loading…</p>`}`;
  }
  show({ spec, history }) {
    const logs = { lines: this.state.lines || [] };
    const name = this.props.name;
    const replicas = (this.props.status?.agents || []).filter((a) => a.name === name);
    const want = this.state.replicas ?? spec.replicas.length;
    const busy = this.state.busy;
    const act = (m, p) => this.act(m, p);
    return html`<section>
      <h2>${name} <span class="note">revision ${spec.revision ?? "–"}, ${spec.origin}</span></h2>
      <p><code>${spec.argv.join(" ")}</code></p>
      ${live.agentName === name && live.usage && html`<${UsageLine} u=${live.usage} />`}
      <div class="controls">
        <label>Replicas <input class="replicas" id="replicas" type="number" min="0"
          value=${want} onInput=${(e) => this.setState({ replicas: Number(e.target.value) })} /></label>
        <button class="primary" id="scale" disabled=${busy}
          onClick=${() => this.act("agents.scale", { name, replicas: want })}>Scale</button>
        <button id="start" disabled=${busy}
          onClick=${() => this.act("agents.start", { names: [name] })}>Start</button>
        <button id="stop" disabled=${busy}
          onClick=${() => this.act("agents.stop", { names: [name] })}>Stop</button>
        <button id="restart" disabled=${busy}
          onClick=${() => this.act("agents.restart", { names: [name] })}>Restart</button>
        <button id="rolling" disabled=${busy}
          onClick=${() => this.act("agents.restart", { names: [name], rolling: true })}>Rolling restart</button>
        ${replicas.some((a) => SERVING.has(a.state)) && html`<button id="pause" disabled=${busy}
          onClick=${() => this.act("agents.pause", { name })}>Pause</button>`}
        ${replicas.some((a) => a.state === "paused") && html`<button id="resume" disabled=${busy}
          onClick=${() => this.act("agents.resume", { name })}>Resume</button>`}
        ${session.methods.includes("agents.remove") && (this.state.removing
          ? html`<button class="danger" id="remove-confirm" disabled=${busy} onClick=${() => this.remove()}>${`Remove ${name}: its replicas stop`}</button>
            <button id="remove-cancel" onClick=${() => this.setState({ removing: false })}>Keep it</button>`
          : html`<button id="remove" disabled=${busy} onClick=${() => this.setState({ removing: true })}>Remove…</button>`)}
      </div>
      ${replicas.length === 0 && html`<p class="note" id="no-replicas">${this.props.stats?.elastic === "asleep"
        ? `${name} is asleep: scaled to zero, a task wakes it.` : this.props.stats?.elastic === "waking"
        ? `${name} is waking: a replica is starting for the tasks that wait.` : `${name} has no replicas: scale it up to run it.`}</p>`}
      <table id="replicas-table">
        <thead><tr><th class="num">Replica</th><th>State</th><th class="num">PID</th>
          <th class="num">Uptime</th><th class="num">Restarts</th><th class="num">CPU</th>
          <th class="num">RSS</th><th>Last exit</th><th></th></tr></thead>
        <tbody>${replicas.map((a) => html`<tr data-replica=${a.replica}>
          <td class="num">${a.replica}</td><td><${State} s=${shown(a)} /></td>
          <td class="num">${a.pid ?? "–"}</td><td class="num">${duration(a.uptime)}</td>
          <td class="num">${a.restarts}</td><td class="num">${a.cpu_percent.toFixed(1)} %</td>
          <td class="num">${bytes(a.rss_bytes)}</td><td>${a.last_exit ?? ""}</td>
          <td class="actions"><${Lifecycle} target=${`${name}#${a.replica}`} act=${act} busy=${busy} />
            ${SERVING.has(a.state) ? html`<button class="pause" disabled=${busy}
            onClick=${() => this.act("agents.pause", { name, replica: a.replica })}>Pause</button>`
            : a.state === "paused" && html`<button class="resume" disabled=${busy}
            onClick=${() => this.act("agents.resume", { name, replica: a.replica })}>Resume</button>`}</td></tr>`)}</tbody>
      </table>
    </section>
    <${Metrics} agent=${name} range=${this.props.range} tick=${this.props.tick}
      setRange=${this.props.setRange} />
    ${session.methods.includes("tasks.submit") && html`<section>
      <h2>Run a task</h2>
      <label class="block">Input (JSON)
        <textarea id="task-input-editor" rows="4" spellcheck="false" value=${this.state.input ?? "null"}
          onInput=${(e) => this.setState({ input: e.target.value })}></textarea></label>
      <div class="controls"><button class="primary" id="run" disabled=${busy} onClick=${() => this.run()}>Run</button>
        <span class="note">Sent as <code>corral run ${name} --input</code> sends it; the task's page shows its output.</span></div>
    </section>`}
    ${(this.state.refusals || []).length > 0 && html`<section>
      <h2>Refused by the boundary</h2>
      <table id="refusals">
        <thead><tr><th>Time</th><th>Kind</th><th>Target</th><th>Task</th><th class="num">Unsaid before</th></tr></thead>
        <tbody>${this.state.refusals.map((r) => html`<tr>
          <td>${stamp(r.time)}</td><td>${r.kind}</td><td><code>${r.target}</code></td>
          <td>${r.task ? html`<a href=${`#/task/${r.task}`}>${r.task}</a>` : "–"}</td><td class="num">${r.unsaid}</td></tr>`)}</tbody>
      </table>
    </section>`}
    <section>
      <h2>Log</h2>
      <pre class="log" id="log" ref=${(el) => (this.log = el)} onScroll=${() => this.logScrolled()}>${logs.lines.map((l) =>
        `${new Date(l[0] * 1000).toISOString().slice(11, 23)} #${l[2]} ${l[4]}: ${l[5]}\n`)}</pre>
    </section>
    <section>
      <h2>Revisions</h2>
      <table id="revisions">
        <thead><tr><th class="num">Rev</th><th>Time</th><th>Who</th><th>Change</th><th></th></tr></thead>
        <tbody>${history.revisions.map((r) => html`<tr>
          <td class="num">${r.revision === history.current ? "* " : ""}${r.revision}</td>
          <td>${stamp(r.time)}</td><td>${r.who}</td><td>${r.change}</td>
          <td>${r.revision !== history.current && html`<button disabled=${busy}
            onClick=${() => this.act("agents.rollback", { name, revision: r.revision })}>Roll back</button>`}</td>
        </tr>`)}</tbody>
      </table>
    </section>`;
  }
}

// -- tasks ----------------------------------------------------------------------------------
const TASK_STATES = ["", "queued", "running", "waiting", "suspended", "succeeded", "failed", "timed_out", "cancelled", "lost"];

class Tasks extends Polled {
  key(props, state) {
    return `${state.agent || ""} ${state.status || ""}`;
  }
  load() {
    const params = { limit: 200 };
    if (this.state.agent) params.agent = this.state.agent;
    if (this.state.status) params.status = this.state.status;
    return call("tasks.list", params);
  }
  show(data) {
    const names = [...new Set((this.props.status?.agents || []).map((a) => a.name))];
    const tasks = [...data.tasks].reverse();
    return html`<section>
      <h2>Tasks</h2>
      <div class="controls">
        <label>Agent <select id="task-agent" onChange=${(e) => this.setState({ agent: e.target.value })}>
          <option value="">every agent</option>
          ${names.map((n) => html`<option value=${n} selected=${n === this.state.agent}>${n}</option>`)}
        </select></label>
        <label>Status <select id="task-status" onChange=${(e) => this.setState({ status: e.target.value })}>
          ${TASK_STATES.map((s) => html`<option value=${s} selected=${s === this.state.status}>${s || "any"}</option>`)}
        </select></label>
      </div>
      <table id="tasks">
        <thead><tr><th>Task</th><th>Agent</th><th>Status</th><th>Created</th>
          <th class="num">Took</th><th class="num">Attempts</th></tr></thead>
        <tbody>${tasks.map((t) => html`<tr data-task=${t.task_id}>
          <td><a href=${`#/task/${t.task_id}`}>${t.task_id}</a></td><td>${t.agent}</td>
          <td><${State} s=${t.status} /></td><td>${stamp(t.created)}</td>
          <td class="num">${t.finished && t.started ? `${((t.finished - t.started) * 1000).toFixed(0)} ms` : "–"}</td>
          <td class="num">${t.attempts}</td></tr>`)}</tbody>
      </table>
      ${tasks.length === 0 && html`<p class="note">No tasks.</p>`}
    </section>`;
  }
}

// -- a task's trace: the waterfall ---------------------------------------------------------
const WATERFALL = { width: 1000, label: 330, row: 22, axis: 26, pad: 12 };

// A span is slow when it is a tool call that took more than twice the median of the task's
// tool calls (two at least); failed when it has an error (its status ERROR).
function slowSpans(spans) {
  const tools = spans.filter((s) => s.name.startsWith("tools/call "));
  if (tools.length < 2) return new Set();
  const took = tools.map((s) => s.end - s.start).sort((a, b) => a - b);
  const mid = took.length >> 1;
  const median = took.length % 2 ? took[mid] : (took[mid - 1] + took[mid]) / 2;
  return new Set(tools.filter((s) => s.end - s.start > 2 * median).map((s) => s.span_id));
}

// Children under their parent (a span whose parent is not in the trace is a root), each
// level in the order the spans started.
function spanRows(spans) {
  const ids = new Set(spans.map((s) => s.span_id));
  const children = new Map();
  for (const s of spans) {
    const parent = ids.has(s.parent_id) ? s.parent_id : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(s);
  }
  const rows = [];
  const walk = (parent, depth) => {
    for (const s of (children.get(parent) || []).sort((a, b) => a.start - b.start)) {
      rows.push({ s, depth });
      walk(s.span_id, depth + 1);
    }
  };
  walk(null, 0);
  return rows;
}

function spanTime(seconds) {
  return seconds < 10 ? `${(seconds * 1000).toFixed(1)} ms` : `${seconds.toFixed(2)} s`;
}

// Bars on the trace's time axis (SVG: its geometry is attributes, which the page's CSP
// allows where a style attribute is not), the tool calls under their attempt.
const Waterfall = ({ trace }) => {
  const spans = trace.spans;
  const W = WATERFALL;
  const t0 = Math.min(...spans.map((s) => s.start));
  const total = Math.max(Math.max(...spans.map((s) => s.end)) - t0, 1e-6);
  const span = W.width - W.label - W.pad;
  const x = (t) => W.label + ((t - t0) / total) * span;
  const rows = spanRows(spans);
  const slow = slowSpans(spans);
  const height = W.axis + rows.length * W.row + 4;
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  return html`<svg id="waterfall" class="waterfall" viewBox=${`0 0 ${W.width} ${height}`}
      role="img" aria-label=${`trace ${trace.trace_id}: ${rows.length} spans over ${spanTime(total)}`}>
    ${ticks.map((f) => html`<g class="tick">
      <line x1=${W.label + f * span} x2=${W.label + f * span} y1=${W.axis - 6} y2=${height} />
      <text x=${W.label + f * span} y=${W.axis - 10}
        text-anchor=${f === 0 ? "start" : f === 1 ? "end" : "middle"}>${spanTime(f * total)}</text></g>`)}
    ${rows.map(({ s, depth }, i) => {
      const y = W.axis + i * W.row;
      const replayed = !!s.attributes?.["corral.step.replayed"];
      const cls = ["bar", slow.has(s.span_id) && "slow", s.error && "failed", replayed && "replayed"]
        .filter(Boolean).join(" ");
      const took = s.end - s.start;
      const note = [spanTime(took), slow.has(s.span_id) && "slow", s.error && `failed: ${s.error}`,
        replayed && "replayed: answered from the task's step journal, not made again"].filter(Boolean).join(" · ");
      return html`<g class="span-row" data-span=${s.span_id} data-name=${s.name} data-depth=${depth}
          data-replayed=${replayed ? "true" : null}>
        <text class="span-name" x=${8 + depth * 16} y=${y + 15}>${s.name}${replayed ? " ↺ replayed" : ""}</text>
        <text class="span-took" x=${W.label - 8} y=${y + 15} text-anchor="end">${spanTime(took)}</text>
        <rect class=${cls} x=${x(s.start)} y=${y + 4} height=${W.row - 8}
          width=${Math.max(2, (took / total) * span)}><title>${`${s.name}: ${note}`}</title></rect>
      </g>`;
    })}
  </svg>`;
};

// a task's statuses before its end (taskmachine.UNFINISHED): no output yet, no trace
const UNENDED = new Set(["queued", "running", "waiting", "suspended"]);

// What an ask asks, in one line (askviews.what_it_asks: the CLI's words)
function whatItAsks(a) {
  const s = a.subject;
  if (a.kind === "question") return `question: ${s.prompt}`;
  if ("tool" in s) return `approval of ${s.tool} ${JSON.stringify(s.arguments ?? {})}`;
  return `approval of a call to model ${s.model} (${typeof s.cost === "number"
    ? `at most $${s.cost.toFixed(4)}` : "no bound on its cost"})`;
}

// What a task that has not ended waits for, with where to act on it: a person (its asks,
// each linked to its card in the inbox) or, queued, what tasks.get's `waiting` says holds
// it (its time, a budget, its agent's capacity: the agent's page acts on those)
function WaitingFor({ t }) {
  if (t.asks?.length) {
    return html`<div id="task-waiting" class="waiting-for"><strong>Waiting for a person:</strong>
      <ul>${t.asks.map((a) => html`<li data-ask=${a.id}><a class="waiting-ask" href=${`#/inbox/${a.id}`}>${
        whatItAsks(a)}</a>, asked ${stamp(a.created)}${a.deadline ? `, times out ${stamp(a.deadline)}` : ""}</li>`)}</ul></div>`;
  }
  if (t.status === "queued" && t.waiting) {
    return html`<div id="task-waiting" class="waiting-for"><strong>Not started:</strong>${" "}
      <span class="waiting-why">${t.waiting}</span> (<a href=${`#/agent/${t.agent}`}>agent ${t.agent}</a>)</div>`;
  }
  return null;
}

// What the task's worker reported it used (usage/report): tokens and dollars, per model
// where it named models
function TaskUsage({ u }) {
  if (!u || !u.reports) return html`<p class="note" id="task-usage">No usage reported.</p>`;
  const models = Object.entries(u.models ?? {});
  const tokens = (x) => `${x.input_tokens.toLocaleString()} in, ${x.output_tokens.toLocaleString()} out`;
  return html`<div id="task-usage"><p>Usage: <span class="usage-total">${tokens(u)} tokens, $${u.cost_usd.toFixed(4)}</span>
      <span class="note">(${u.reports} report${u.reports === 1 ? "" : "s"})</span></p>
    ${models.length > 0 && html`<table id="task-models">
      <thead><tr><th>Model</th><th class="num">Input tokens</th><th class="num">Output tokens</th>
        <th class="num">Cost</th><th class="num">Reports</th></tr></thead>
      <tbody>${models.map(([name, x]) => html`<tr data-model=${name}><td class="wrap">${name}</td>
        <td class="num">${x.input_tokens.toLocaleString()}</td><td class="num">${x.output_tokens.toLocaleString()}</td>
        <td class="num">$${x.cost_usd.toFixed(4)}</td><td class="num">${x.reports}</td></tr>`)}</tbody>
    </table>`}</div>`;
}

// A task's live output (tasks.stream), followed while its view is open: the chunks as
// they come, until the stream's `result`; the newest STREAM_CHARS of it shown.
const STREAM_CHARS = 256 * 1024;
class Task extends Polled {
  key(props) {
    return props.id;
  }
  componentWillUnmount() {
    super.componentWillUnmount();
    this.closeStream();
  }
  componentDidUpdate(prevProps, prevState) {
    super.componentDidUpdate(prevProps, prevState);
    if (prevProps.id !== this.props.id) this.closeStream();
  }
  // opened by a load (the session's streams may be read after the view mounted), once
  // per task
  openStream() {
    if (this.streamOf === this.props.id || !session.streams.includes("tasks.stream")) return;
    this.streamOf = this.props.id;
    this.setState({ streamed: "", chunks: 0, streamEnded: false });
    const stop = follow("tasks.stream", { task_id: this.props.id }, {
      "tasks.output": (c) => this.setState((st) => ({
        streamed: (st.streamed + (c.truncated ? `\n[corral: ${c.data}]\n` : c.data)).slice(-STREAM_CHARS),
        chunks: st.chunks + 1,
      })),
      // the task has ended and every chunk is here: the browser must not reconnect
      result: () => {
        stop();
        this.setState({ streamEnded: true });
      },
      problem: () => stop(),
    });
    this.unstream = stop;
  }
  closeStream() {
    if (this.unstream) this.unstream();
    this.unstream = null;
    this.streamOf = null;
  }
  // the input is asked for once per task (it does not change, and may be large); the
  // trace once it has ended (its spans are made at its end)
  async load() {
    this.openStream();
    const first = this.input === undefined || this.inputOf !== this.props.id;
    const t = await call("tasks.get", { task_id: this.props.id, input: first });
    if (first) {
      this.inputOf = this.props.id;
      this.input = "input" in t ? { value: t.input } : null;
      this.trace = undefined;
    }
    const ended = !UNENDED.has(t.status);
    if (ended && this.trace === undefined && session.methods.includes("traces.get")) {
      try {
        this.trace = await call("traces.get", { task_id: this.props.id });
      } catch (e) {
        this.trace = { error: e.message };
      }
    }
    return t;
  }
  showTrace() {
    const tr = this.trace;
    if (tr === undefined) return html`<p class="note" id="trace-note">The trace is drawn once the task has ended.</p>`;
    if (tr.error) return html`<p class="note" id="trace-note">${tr.error}</p>`;
    if (!tr.spans.length) return html`<p class="note" id="trace-note">No trace kept for this task (not sampled, or pruned from the local store).</p>`;
    return html`<p class="note">Trace <code id="trace-id">${tr.trace_id}</code>; <span class="legend slow">slow</span>
      a tool call over twice the median of the task's, <span class="legend failed">failed</span> one that failed,${" "}
      <span class="legend replayed">replayed</span> a retry's step answered from the task's step journal (not made again).</p>
      <${Waterfall} trace=${tr} />`;
  }
  show(t) {
    return html`<section id="task">
      <h2>Task ${t.task_id} <${State} s=${t.status} /></h2>
      <p>Agent <a href=${`#/agent/${t.agent}`}>${t.agent}</a>, priority ${t.priority},
        created ${stamp(t.created)}, ${t.tool_calls} tool calls</p>
      ${Object.keys(t.options ?? {}).length > 0 && html`<p id="task-options">Options as submitted: ${
        Object.entries(t.options).map(([k, v]) => html`<code>${k} = ${JSON.stringify(v)}</code> `)}</p>`}
      <${WaitingFor} t=${t} />
      <${TaskUsage} u=${t.usage} />
      <h2>Attempts</h2>
      <table id="attempts">
        <thead><tr><th class="num">Replica</th><th class="num">PID</th><th>Started</th>
          <th>Finished</th><th>Outcome</th><th>Steps replayed</th><th>Error</th></tr></thead>
        <tbody>${t.attempts.map((a) => html`<tr>
          <td class="num">${a.replica}</td><td class="num">${a.pid ?? "–"}</td>
          <td class="wrap">${stamp(a.started)}</td><td class="wrap">${stamp(a.finished)}</td><td>${a.outcome}</td>
          <td class="wrap replayed">${a.replayed ? `${a.replayed}${a.diverged ? `, live from call ${a.diverged}` : ""}` : "–"}</td>
          <td class="wrap attempt-error">${a.error ?? ""}</td></tr>`)}</tbody>
      </table>
      ${session.methods.includes("traces.get") && html`<h2>Trace</h2>${this.showTrace()}`}
      <h2>Input</h2>
      ${this.input ? html`<pre class="json" id="task-input">${JSON.stringify(this.input.value, null, 2)}</pre>`
        : html`<p class="note" id="task-input">The input is not kept: the task ran on a node of the cluster, its daemon has no task journal, or its row was pruned.</p>`}
      ${this.streamOf === t.task_id && html`<h2>Live output</h2>
        ${this.state.chunks ? html`<pre class="log" id="task-stream">${this.state.streamed}</pre>`
          : html`<p class="note" id="task-stream">${this.state.streamEnded
            ? "The task sent no live output." : "No live output yet."}</p>`}`}
      <h2>Output</h2>
      <pre class="json" id="task-output">${UNENDED.has(t.status)
        ? `(${t.status}…)` : JSON.stringify(t.error ?? t.output, null, 2)}</pre>
    </section>`;
  }
}

// -- metrics --------------------------------------------------------------------------------
// Two sources. Live: a point per poll of stats.get, kept in the page (counters become rates
// by their deltas), for the fleet and for the agent whose view is open. Last hour, day or
// week: the daemon's samples (stats.history), reloaded as often as new ones come.
const KEYS = ["tasksPerMin", "errorRate", "p50", "p95", "queue", "cpu", "rss"];
function emptySeries() {
  const s = { t: [], prev: null };
  for (const k of KEYS) s[k] = [];
  return s;
}
// `usage`: the open agent's token and cost usage, as the last stats.sample had it
const live = { fleet: emptySeries(), agent: null, agentName: null, usage: null };

function finished(c) {
  return c.succeeded + c.failed + c.timed_out + c.cancelled + c.lost;
}

// one live point: `counts` are counters (TaskCounts), `g` the gauges of the moment
function append(s, now, counts, g) {
  let perMin = null;
  let errors = null;
  if (s.prev) {
    const dt = now - s.prev.t;
    const done = finished(counts) - finished(s.prev.counts);
    // as the history counts them: failed, timed out or lost (a cancel is no error)
    const bad = ["failed", "timed_out", "lost"].reduce((n, k) => n + counts[k] - s.prev.counts[k], 0);
    perMin = dt > 0 ? (done / dt) * 60 : null;
    errors = done > 0 ? bad / done : 0;
  }
  s.prev = { t: now, counts };
  s.t.push(now);
  const point = { tasksPerMin: perMin, errorRate: errors, ...g };
  for (const k of KEYS) s[k].push(point[k]);
  if (s.t.length > KEEP_POINTS) for (const k of ["t", ...KEYS]) s[k].shift();
}

function record(stats, agentName) {
  const now = Date.now() / 1000;
  const total = stats.tasks.total;
  const agents = Object.values(stats.agents);
  const lat = Object.values(stats.tasks.agents).map((a) => a.latency_ms);
  const worst = (key) => {
    const v = lat.map((l) => l[key]).filter((x) => x !== null);
    return v.length ? Math.max(...v) : null;
  };
  append(live.fleet, now, total, {
    p50: worst("p50"), p95: worst("p95"), queue: total.queue_depth,
    cpu: agents.reduce((s, a) => s + a.cpu_percent, 0),
    rss: agents.reduce((s, a) => s + a.rss_bytes, 0),
  });
  // the open agent's own points, from the page's opening of its view
  if (agentName !== live.agentName) {
    live.agentName = agentName;
    live.agent = agentName ? emptySeries() : null;
  }
  const tasks = agentName && stats.tasks.agents[agentName];
  const a = agentName && stats.agents[agentName];
  live.usage = (a && a.usage) || null;
  if (tasks && a) {
    append(live.agent, now, tasks, {
      p50: tasks.latency_ms.p50, p95: tasks.latency_ms.p95, queue: tasks.queue_depth,
      cpu: a.cpu_percent, rss: a.rss_bytes,
    });
  }
}

// stats.history's samples as the charts' series
function fromSamples(samples) {
  const s = emptySeries();
  for (const x of samples) {
    s.t.push(x.time);
    s.tasksPerMin.push(x.seconds > 0 ? x.executions / (x.seconds / 60) : null);
    s.errorRate.push(x.error_rate);
    s.p50.push(x.p50_ms);
    s.p95.push(x.p95_ms);
    s.queue.push(x.queued);
    s.cpu.push(x.cpu_percent);
    s.rss.push(x.rss_bytes);
  }
  return s;
}

const CHARTS = [
  { id: "tasks", title: "Tasks per minute", lines: [["tasksPerMin", "tasks/min"]] },
  { id: "errors", title: "Error rate", lines: [["errorRate", "errors / finished"]] },
  { id: "latency", title: "Execution time (ms)", lines: [["p50", "p50"], ["p95", "p95"]] },
  { id: "queue", title: "Queue depth", lines: [["queue", "queued"]] },
  { id: "cpu", title: "CPU (%)", lines: [["cpu", "CPU %"]] },
  { id: "memory", title: "Memory (RSS)", lines: [["rss", "RSS"]], bytes: true },
];
const COLOURS = ["#2f6fdf", "#cf222e"];
const RANGES = { live: null, hour: 3600, day: 86400, week: 7 * 86400 };
window.corralCharts = {}; // uPlot instances by chart id: the browser tests read them

// A value axis as wide as its longest tick label (uPlot draws them on a canvas, cut at
// the axis's width: a fixed width cut "190.7 MiB" to ".90.7 MiB").
function fitLabels(u, values, axisIdx, cycleNum) {
  const axis = u.axes[axisIdx];
  if (cycleNum > 1) return axis._size; // settled: uPlot asks again until sizes agree
  let size = axis.ticks.size + axis.gap + 4;
  const longest = (values || []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), "");
  if (longest) {
    u.ctx.font = axis.font[0];
    size += u.ctx.measureText(longest).width / (window.devicePixelRatio || 1);
  }
  return Math.ceil(size);
}

// Byte ticks at powers of two (whole KiB, MiB, ... and their halves, quarters), each
// written in the largest unit in which no two of them read alike.
const BYTE_INCRS = Array.from({ length: 51 }, (_, i) => 2 ** i);
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
function byteTicks(u, splits) {
  const top = Math.max(...splits.map(Math.abs), 1);
  for (let i = Math.min(UNITS.length - 1, Math.floor(Math.log(top) / Math.log(1024))); i >= 0; i--) {
    for (let dec = 0; dec <= 2; dec++) {
      const labels = splits.map((v) => `${(v / 1024 ** i).toFixed(dec)} ${UNITS[i]}`);
      if (new Set(labels).size === labels.length) return labels;
    }
  }
  return splits.map((v) => `${v} B`);
}

class Chart extends Component {
  componentDidMount() {
    const { spec } = this.props;
    const opts = {
      width: Math.max(300, this.el.clientWidth),
      height: 180,
      series: [{}, ...spec.lines.map(([, label], i) => ({
        label, stroke: COLOURS[i], width: 1.5, spanGaps: true,
        value: spec.bytes ? (u, v) => (v === null ? "–" : bytes(v)) : undefined,
      }))],
      axes: [{}, spec.bytes ? { values: byteTicks, incrs: BYTE_INCRS, size: fitLabels }
        : { size: fitLabels }],
      legend: { live: true },
    };
    this.plot = new window.uPlot(opts, this.data(), this.el);
    window.corralCharts[spec.id] = this.plot;
  }
  componentWillUnmount() {
    if (window.corralCharts[this.props.spec.id] === this.plot) delete window.corralCharts[this.props.spec.id];
    this.plot.destroy();
  }
  data() {
    const { series } = this.props;
    return [series.t, ...this.props.spec.lines.map(([k]) => series[k])];
  }
  componentDidUpdate(prev) {
    if (prev.series !== this.props.series) this.plot.setData(this.data());
  }
  render() {
    return html`<div class="chart" id=${`chart-${this.props.spec.id}`}>
      <h3>${this.props.spec.title}</h3><div class="plot" ref=${(el) => (this.el = el)}></div></div>`;
  }
}

function every(seconds) {
  return seconds < 60 ? `${+seconds.toFixed(1)} s` : seconds === 60 ? "minute" : seconds === 3600 ? "hour" : duration(seconds);
}

// The charts of the fleet (no `agent`) or of one agent, over `range`.
class Metrics extends Polled {
  key(props) {
    return `${props.range} ${props.agent || ""}`;
  }
  polls() {
    return this.stored();
  }
  stored() {
    return this.props.range !== "live" && session.methods.includes("stats.history");
  }
  // the history of the range; reloaded when a new sample may be there (at most once a
  // second, at least once a minute)
  async load() {
    const params = { since: RANGES[this.props.range] };
    if (this.props.agent) params.agent = this.props.agent;
    let history = await call("stats.history", params);
    // a roll-up not made yet (the first minute or hour of a history): the raw samples
    if (!history.samples.length && history.resolution !== "raw") {
      history = await call("stats.history", { ...params, resolution: "raw" });
    }
    return { result: history, series: fromSamples(history.samples) };
  }
  next(data) {
    return Math.min(60, Math.max(1, data ? data.result.interval : 5)) * 1000;
  }
  note(who) {
    if (!session.methods.includes("stats.history")) {
      return "This daemon keeps no metrics history (stats.history): the charts show the points since this page opened, one a second.";
    }
    if (!this.stored()) {
      return `Live: points of ${who}, one a second since this page opened (stats.get); last hour, day or week show the daemon's history.`;
    }
    const h = this.state.data;
    if (!h) return this.state.error ? "" : "Loading the history…";
    const r = h.result;
    const n = r.samples.length;
    if (!n) {
      return `No history samples yet for ${who}: the daemon takes one every ${every(r.interval)} ([http] history_interval).`;
    }
    return `History of ${who} (stats.history): a point per ${every(r.interval)}, ` +
      `${n} samples from ${stamp(r.samples[0].time)}${r.truncated ? " (the newest only)" : ""}.`;
  }
  render() {
    const { range, setRange, agent } = this.props;
    let series;
    if (this.stored()) {
      series = this.state.data ? this.state.data.series : emptySeries();
    } else {
      const s = (agent ? live.agentName === agent && live.agent : live.fleet) || emptySeries();
      const from = RANGES[range] ? Date.now() / 1000 - RANGES[range] : 0;
      let i = 0;
      while (i < s.t.length && s.t[i] < from) i++;
      series = { t: s.t.slice(i) };
      for (const k of KEYS) series[k] = s[k].slice(i);
    }
    return html`<section>
      <h2>Metrics</h2>
      <div class="controls">
        ${Object.keys(RANGES).map((r) => html`<button class=${r === range ? "primary" : ""}
          id=${`range-${r}`} onClick=${() => setRange(r)}>${r === "live" ? "live" : `last ${r}`}</button>`)}
        <span class="note" id="history-note">${this.note(agent || "the fleet")}</span>
      </div>
      ${this.state.error && html`<div class="error">${this.state.error}</div>`}
      <div class="charts">${CHARTS.map((c) => html`<${Chart} spec=${c} series=${series} />`)}</div>
    </section>`;
  }
}

// -- MCP servers and the gateway's clients ----------------------------------------------------
class Mcp extends Polled {
  load() {
    return call("mcp.status");
  }
  show(data) {
    const clients = Object.entries(data.gateway.clients);
    return html`<section>
      <h2>MCP servers</h2>
      <table id="mcp">
        <thead><tr><th>Server</th><th class="num">Instance</th><th>State</th><th>Scope</th>
          <th class="num">Tools</th><th class="num">Calls</th><th class="num">Errors</th>
          <th class="num">In flight</th><th class="num">Restarts</th><th>Protocol</th></tr></thead>
        <tbody>${data.mcp_servers.map((s) => html`<tr>
          <td>${s.name}</td><td class="num">${s.instance}</td><td><${State} s=${s.state} /></td>
          <td>${s.scope}${s.owner ? ` (${s.owner})` : ""}</td><td class="num">${s.tools}</td>
          <td class="num">${s.calls}</td><td class="num">${s.errors}</td>
          <td class="num">${s.in_flight}</td><td class="num">${s.restarts}</td>
          <td>${s.protocol_version ?? "–"}</td></tr>`)}</tbody>
      </table>
      ${data.mcp_servers.length === 0 && html`<p class="note">No MCP servers.</p>`}
    </section>
    <section>
      <h2>Gateway clients ${data.gateway.url && html`<span class="note">${data.gateway.url}</span>`}</h2>
      <table id="gateway">
        <thead><tr><th>Client</th><th class="num">Calls</th><th class="num">Errors</th>
          <th class="num">In flight</th><th class="num">p50</th><th class="num">p95</th>
          <th class="num">Waited for a person</th></tr></thead>
        <tbody>${clients.map(([name, c]) => html`<tr data-client=${name}><td>${name}</td>
          <td class="num">${c.calls}</td><td class="num">${c.errors}</td><td class="num">${c.in_flight}</td>
          <td class="num p50">${c.p50_ms?.toFixed(1) ?? "–"}</td><td class="num">${c.p95_ms?.toFixed(1) ?? "–"}</td>
          <td class="num waited">${c.waited ? `${c.waited} (${(c.waited_ms / 1000).toFixed(1)} s)` : "–"}</td></tr>`)}</tbody>
      </table>
      <p class="note">p50 and p95 (ms) are the calls' own time: a wait for a person's approval is counted apart.</p>
      ${clients.length === 0 && html`<p class="note">No gateway calls yet.</p>`}
    </section>`;
  }
}

// -- the audit log --------------------------------------------------------------------------
class Audit extends Polled {
  load() {
    return call("audit.list", { limit: 200 });
  }
  show(data) {
    return html`<section>
      <h2>Audit log</h2>
      <table id="audit">
        <thead><tr><th>Time</th><th class="num">UID</th><th>Method</th><th>Outcome</th><th>Params</th></tr></thead>
        <tbody>${data.entries.map((e) => html`<tr><td>${stamp(e.time)}</td>
          <td class="num">${e.uid}</td><td>${e.method}</td><td>${e.outcome}</td>
          <td><code>${JSON.stringify(e.params).slice(0, 120)}</code></td></tr>`)}</tbody>
      </table>
    </section>`;
  }
}

// -- workflow runs: the list, and a run's graph drawn live ------------------------------
const RUN_STATES = ["", "running", "succeeded", "failed", "cancelled", "timed_out"];

// filtered and paged as runs.list pages: `next` is the cursor of the older runs
class Runs extends Polled {
  key(props, state) {
    return `${state.workflow || ""} ${state.status || ""} ${state.before || ""}`;
  }
  load() {
    const params = { limit: 100 };
    for (const k of ["workflow", "status", "before"]) if (this.state[k]) params[k] = this.state[k];
    return call("runs.list", params);
  }
  filter(change) {
    this.setState({ ...change, before: "" });
  }
  show(data) {
    this.seen = new Set([...(this.seen || []), ...data.runs.map((r) => r.workflow)]);
    const names = [...this.seen].sort();
    return html`<section>
      <h2>Workflow runs</h2>
      <div class="controls">
        <label>Workflow <select id="run-workflow" onChange=${(e) => this.filter({ workflow: e.target.value })}>
          <option value="">every workflow</option>
          ${names.map((n) => html`<option value=${n} selected=${n === this.state.workflow}>${n}</option>`)}
        </select></label>
        <label>Status <select id="run-status" onChange=${(e) => this.filter({ status: e.target.value })}>
          ${RUN_STATES.map((s) => html`<option value=${s} selected=${s === this.state.status}>${s || "any"}</option>`)}
        </select></label>
        ${this.state.before && html`<button id="runs-newest" onClick=${() => this.setState({ before: "" })}>Newest</button>`}
        ${data.next && html`<button id="runs-older" onClick=${() => this.setState({ before: data.next })}>Older runs</button>`}
      </div>
      <table id="runs">
        <thead><tr><th>Run</th><th>Workflow</th><th>Status</th><th>Created</th>
          <th class="num">Took</th><th>Error</th></tr></thead>
        <tbody>${data.runs.map((r) => html`<tr data-run=${r.run_id}>
          <td><a href=${`#/run/${r.run_id}`}>${r.run_id}</a></td><td>${r.workflow}</td>
          <td><${State} s=${r.status} /></td><td>${stamp(r.created)}</td>
          <td class="num">${took(r.created, r.ended)}</td><td>${r.error ?? ""}</td></tr>`)}</tbody>
      </table>
      ${data.runs.length === 0 && html`<p class="note">No runs.</p>`}
    </section>`;
  }
}

function took(start, end) {
  if (start == null) return "–";
  return spanTime((end ?? Date.now() / 1000) - start);
}

const GRAPH = { w: 170, h: 46, gapX: 56, gapY: 18, pad: 12 };

// Each step in a column by its depth (1 + the deepest step it waits for), in the
// definition's order within a column; an edge from each step waited for.
function graphLayout(graph) {
  const level = {};
  const columns = [];
  for (const g of graph) {
    level[g.step] = g.after.length ? 1 + Math.max(...g.after.map((a) => level[a])) : 0;
    (columns[level[g.step]] ||= []).push(g.step);
  }
  const at = {};
  columns.forEach((col, i) => col.forEach((name, j) => {
    at[name] = { x: GRAPH.pad + i * (GRAPH.w + GRAPH.gapX), y: GRAPH.pad + j * (GRAPH.h + GRAPH.gapY) };
  }));
  const width = GRAPH.pad * 2 + columns.length * GRAPH.w + (columns.length - 1) * GRAPH.gapX;
  const height = GRAPH.pad * 2 + Math.max(...columns.map((c) => c.length)) * (GRAPH.h + GRAPH.gapY) - GRAPH.gapY;
  return { at, width, height };
}

// A step's state in the graph, as runs.get sums it: its own row's ("pending" before it
// starts), a map's items counted (how many ended well of those started)
function stepState(g) {
  const counts = g.items || {};
  const items = Object.values(counts).reduce((a, b) => a + b, 0);
  return { row: g.status === "pending" ? null : g, status: g.status, items, done: counts.succeeded || 0 };
}

const RunGraph = ({ run, pick }) => {
  const { at, width, height } = graphLayout(run.graph);
  return html`<svg id="run-graph" class="run-graph" viewBox=${`0 0 ${width} ${height}`}
      width=${width} role="img" aria-label=${`run ${run.run_id}: ${run.graph.length} steps`}>
    ${run.graph.flatMap((g) => g.after.map((a) => {
      const from = at[a], to = at[g.step];
      const x1 = from.x + GRAPH.w, y1 = from.y + GRAPH.h / 2, x2 = to.x, y2 = to.y + GRAPH.h / 2;
      const mid = (x1 + x2) / 2;
      return html`<path class="edge" data-from=${a} data-to=${g.step}
        d=${`M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`} />`;
    }))}
    ${run.graph.map((g) => {
      const st = stepState(g);
      const { x, y } = at[g.step];
      const detail = [st.status, g.map && st.items ? `${st.done}/${st.items}` : "",
        st.row ? took(st.row.started, st.row.ended) : ""].filter(Boolean).join(" · ");
      return html`<g class=${`node state-${st.status}`} data-step=${g.step} data-status=${st.status}
          tabindex="0" onClick=${() => pick(g, st)} onKeyDown=${(e) => e.key === "Enter" && pick(g, st)}>
        <rect x=${x} y=${y} width=${GRAPH.w} height=${GRAPH.h} rx="6" />
        <text class="node-name" x=${x + 10} y=${y + 18}>${g.step}</text>
        <text class="node-detail" x=${x + 10} y=${y + 36}>${detail}</text>
        <title>${`${g.step}: ${g.runs}${g.map ? " (map)" : ""}; ${detail}`}</title>
      </g>`;
    })}
  </svg>`;
};

const ITEMS_SHOWN = 1000; // a map's items listed under the graph, the first page of them
const RUN_LEGEND = ["pending", "running", "succeeded", "skipped", "failed", "cancelled"];

// Followed by its events (events.follow: corral.run.*, corral.step.*, each naming its run):
// read again as one of this run's comes, a burst read once; read each second instead when
// the session has no such stream (a token without the events scope).
class Run extends Polled {
  componentDidMount() {
    super.componentDidMount();
    this.live = session.streams.includes("events.follow") && session.scopes.includes("events");
    if (this.live) {
      this.unfollow = follow("events.follow", { pattern: "corral.*" }, {
        "events.event": (e) => e.data && e.data.run_id === this.props.id && this.soon(),
      });
    }
  }
  componentWillUnmount() {
    super.componentWillUnmount();
    clearTimeout(this.soonTimer);
    if (this.unfollow) this.unfollow();
  }
  key(props, state) {
    return `${props.id}/${(state && state.picked) || ""}`;
  }
  // the graph sums every step; a picked map's rows are read, a page of them, and no
  // output of any row: a run's items' outputs are the state database's (decision 444)
  load() {
    const picked = this.state.picked;
    return call("runs.get", picked ? { run_id: this.props.id, step: picked, limit: ITEMS_SHOWN, outputs: false }
      : { run_id: this.props.id, limit: 0, outputs: false });
  }
  async tick(gen) {
    this.busy = true;
    try {
      await super.tick(gen);
    } finally {
      this.busy = false;
    }
    if (this.again && gen === this.gen) {
      this.again = false;
      this.soon();
    }
  }
  // an event of this run: read it again shortly (one read for a map's burst of items)
  soon() {
    if (this.busy) {
      this.again = true;
      return;
    }
    if (this.soonTimer) return;
    this.soonTimer = setTimeout(() => {
      this.soonTimer = null;
      if (this.busy) {
        this.again = true;
        return;
      }
      clearTimeout(this.timer);
      this.tick(this.gen);
    }, 50);
  }
  // while it runs: each second, or now and then when its events say when (a stream that
  // dropped some is caught up); an ended run changes no more
  next(data) {
    return data && data.status !== "running" ? 10 * POLL_MS : this.live ? 5 * POLL_MS : POLL_MS;
  }
  // a step's task (or its nested run) opened; a map's items listed below the graph
  pick(g, st) {
    if (st.row?.run_id) location.hash = `#/run/${st.row.run_id}`;
    else if (st.row?.task_id) location.hash = `#/task/${st.row.task_id}`;
    else this.setState({ picked: g.step });
  }
  show(run) {
    const picked = this.state.picked && run.steps.filter((s) => s.step === this.state.picked && s.item !== null);
    const more = picked && run.steps_next != null;
    return html`<section id="run">
      <h2>Run ${run.run_id} <${State} s=${run.status} /></h2>
      <p>Workflow ${run.workflow}${run.revision != null ? ` (revision ${run.revision})` : ""},
        created ${stamp(run.created)}, took ${took(run.created, run.ended)}</p>
      ${run.error && html`<div class="error" id="run-error">${run.error}</div>`}
      <p class="note">${RUN_LEGEND.map((s) => html`<span class=${`state state-${s}`}>${s}</span> `)}
        — click a step for its task (a nested workflow's: its run; a map's: its items).</p>
      <div class="graph-wrap"><${RunGraph} run=${run} pick=${(g, st) => this.pick(g, st)} /></div>
      ${picked && html`<h2>Items of ${this.state.picked}</h2>
        <table id="run-items"><thead><tr><th class="num">Item</th><th>Status</th><th class="num">Took</th>
          <th>Task</th></tr></thead>
        <tbody>${picked.map((s) => html`<tr data-item=${s.item}><td class="num">${s.item}</td>
          <td><${State} s=${s.status} /></td><td class="num">${took(s.started, s.ended)}</td>
          <td>${s.task_id ? html`<a href=${`#/task/${s.task_id}`}>${s.task_id}</a>`
            : s.run_id ? html`<a href=${`#/run/${s.run_id}`}>${s.run_id}</a>` : "–"}</td></tr>`)}</tbody>
        </table>${more && html`<p class="note">The first ${picked.length} items;
          <code>corral run-status ${run.run_id} --json --step ${this.state.picked}</code> pages them all.</p>`}`}
      <h2>Output</h2>
      <pre class="json" id="run-output">${run.status === "running" ? "(running…)"
        : run.error != null || run.output != null || !(run.output_bytes > 4) ? JSON.stringify(run.error ?? run.output, null, 2)
        : `(${run.output_bytes} bytes, more than a page shows: corral run-status ${run.run_id} --json --step ${run.graph[run.graph.length - 1].step})`}</pre>
    </section>`;
  }
}

// -- the inbox ------------------------------------------------------------------------------
// The asks approvals.watch tells of: those pending that the session sees (an ask with no
// `end`), and the newest KEEP_DECIDED that ended while the page was open, with how.
const KEEP_DECIDED = 50;
class InboxModel {
  constructor() {
    this.pending = new Map(); // id -> ask, oldest first as the stream sends them
    this.ended = []; // newest first
  }
  // the stream (re)opened: it sends every pending ask again, and one that ended while it
  // was away would otherwise be shown pending for good
  reset() {
    this.pending = new Map();
  }
  ask(a) {
    if (a.end === null || a.end === undefined) {
      if (!this.ended.some((x) => x.id === a.id)) this.pending.set(a.id, a);
      return;
    }
    this.pending.delete(a.id);
    this.ended = [a, ...this.ended.filter((x) => x.id !== a.id)].slice(0, KEEP_DECIDED);
  }
  // the stream said the page fell behind (approvals.missed): the list read again
  relisted(asks) {
    this.reset();
    for (const a of asks) this.ask(a);
  }
}

const pretty = (v) => JSON.stringify(v, null, 2);
// a question whose schema takes a string is answered with the text as typed; any other
// with JSON, which the daemon checks against the schema
const takesText = (subject) => subject.schema?.type === "string";

function asked(a) {
  if (a.kind === "question") return a.subject.prompt;
  if ("tool" in a.subject) return `${a.subject.tool} ${JSON.stringify(a.subject.arguments)}`;
  return JSON.stringify(a.subject);
}

// One pending ask, with its decisions: an approval approved (with its arguments as the
// box holds them: edited, they are the ones the call runs with) or denied; a question
// answered or denied. The daemon's refusal is shown as it words it.
class AskCard extends Component {
  constructor(props) {
    super(props);
    const s = props.ask.subject;
    this.state = { args: props.ask.kind === "approval" && "arguments" in s ? pretty(s.arguments) : "",
      answer: "", reason: "", error: null, busy: false };
  }
  // the card a task's page linked to (#/inbox/ASK) is brought into view
  componentDidMount() {
    if (this.props.focused) this.base.scrollIntoView({ block: "center" });
  }
  params(decision) {
    const a = this.props.ask;
    const p = { id: a.id, decision };
    if (decision === "denied") {
      if (this.state.reason.trim()) p.reason = this.state.reason.trim();
    } else if (decision === "approved" && "arguments" in a.subject) {
      let args;
      try {
        args = JSON.parse(this.state.args);
      } catch (e) {
        throw new Error(`the arguments are not JSON: ${e.message}`);
      }
      if (args === null || typeof args !== "object" || Array.isArray(args)) {
        throw new Error("the arguments are a JSON object");
      }
      // the originals are sent as none: the ask's record then says nothing was edited
      if (JSON.stringify(args) !== JSON.stringify(a.subject.arguments)) p.arguments = args;
    } else if (decision === "answered") {
      if (takesText(a.subject)) {
        p.answer = this.state.answer;
      } else {
        try {
          p.answer = JSON.parse(this.state.answer);
        } catch (e) {
          throw new Error(`the answer is not JSON: ${e.message}`);
        }
      }
    }
    return p;
  }
  async decide(decision) {
    let params;
    try {
      params = this.params(decision);
    } catch (e) {
      this.setState({ error: e.message });
      return;
    }
    this.setState({ busy: true, error: null });
    try {
      this.props.decided(await call("approvals.resolve", params));
    } catch (e) {
      this.setState({ error: e.message, busy: false });
    }
  }
  render({ ask: a, focused }, st) {
    const s = a.subject;
    const approval = a.kind === "approval";
    const button = (decision, label, cls) => html`<button class=${`decide-${decision}${cls ? ` ${cls}` : ""}`}
      disabled=${st.busy} onClick=${() => this.decide(decision)}>${label}</button>`;
    return html`<div class=${`ask${focused ? " focused" : ""}`} data-ask=${a.id} data-kind=${a.kind}>
      <h3>${approval ? "Approval" : "Question"} <code>${a.id}</code></h3>
      <p>Task <a class="ask-task" href=${`#/task/${a.task_id}`}>${a.task_id}</a>, agent${" "}
        <a class="ask-agent" href=${`#/agent/${a.agent}`}>${a.agent}</a>${a.tenant ? ` of tenant ${a.tenant}` : ""},
        asked ${stamp(a.created)}, ${a.deadline ? `decided by ${stamp(a.deadline)} or it times out` : "no deadline"}</p>
      ${approval && "tool" in s && html`<p>Tool <code class="ask-tool">${s.tool}</code></p>
        <label class="block">Arguments (the call runs with these; edit them to approve others)
          <textarea class="ask-args" rows=${Math.min(12, st.args.split("\n").length + 1)}
            value=${st.args} onInput=${(e) => this.setState({ args: e.target.value })}></textarea></label>`}
      ${approval && !("tool" in s) && html`<pre class="json ask-subject">${pretty(s)}</pre>`}
      ${!approval && html`<p class="ask-prompt">${s.prompt}</p>
        ${s.schema && html`<p class="note">The answer must fit this schema:</p><pre class="json ask-schema">${pretty(s.schema)}</pre>`}
        <label class="block">Answer (${takesText(s) ? "text" : "JSON"})
          <textarea class="ask-answer" rows="3" value=${st.answer}
            onInput=${(e) => this.setState({ answer: e.target.value })}></textarea></label>`}
      <label class="block">Reason, told to the agent if denied
        <input class="ask-reason wide" value=${st.reason} onInput=${(e) => this.setState({ reason: e.target.value })} /></label>
      <div class="actions">${approval ? button("approved", "Approve", "primary") : button("answered", "Answer", "primary")}
        ${button("denied", "Deny", "danger")}</div>
      ${st.error && html`<div class="error ask-error">${st.error}</div>`}
    </div>`;
  }
}

function Inbox({ inbox, decided, focus }) {
  if (!inbox) return html`<section id="inbox"><h2>Inbox</h2>
    <p class="note">This session does not hold the approvals scope: it sees no asks.</p></section>`;
  const pending = [...inbox.pending.values()];
  return html`<section id="inbox">
      <h2>Inbox: ${pending.length} waiting for a person</h2>
      ${pending.length ? html`<div id="inbox-pending">${pending.map((a) => html`<${AskCard} key=${a.id} ask=${a}
        focused=${a.id === focus} decided=${decided} />`)}</div>` : html`<p class="note" id="inbox-pending">No task waits for a person.</p>`}
    </section>
    <section>
      <h2>Decided while this page was open</h2>
      <table id="inbox-decided">
        <thead><tr><th>Ask</th><th>Task</th><th>Agent</th><th>Asked</th><th>Decision</th><th>By</th>
          <th>When</th><th>With</th></tr></thead>
        <tbody>${inbox.ended.map((a) => html`<tr data-ask=${a.id}>
          <td><code>${a.id}</code></td><td><a href=${`#/task/${a.task_id}`}>${a.task_id}</a></td>
          <td>${a.agent}</td><td class="wrap">${asked(a)}</td><td class="end"><${State} s=${a.end} /></td>
          <td class="by">${a.by}</td><td>${stamp(a.ended)}</td>
          <td class="wrap data">${a.data === null || a.data === undefined ? "" : JSON.stringify(a.data)}</td></tr>`)}</tbody>
      </table>
    </section>`;
}

// -- the page -------------------------------------------------------------------------------
const VIEWS = [["fleet", "Fleet"], ["tasks", "Tasks"], ["runs", "Runs"], ["inbox", "Inbox"], ["metrics", "Metrics"],
  ["mcp", "MCP"], ["audit", "Audit"]];

function route() {
  const [view, arg] = location.hash.replace(/^#\/?/, "").split("/");
  return { view: view || "fleet", arg: arg ? decodeURIComponent(arg) : null };
}

class App extends Component {
  constructor() {
    super();
    this.state = { route: route(), status: null, error: null, login: null, range: "hour", tick: 0, seen: 0,
      tenantOf: {}, grouped: false };
  }
  async componentDidMount() {
    window.addEventListener("hashchange", () => this.setState({ route: route() }));
    const r = await fetch("session", { credentials: "same-origin" });
    if (!r.ok) {
      this.setState({ login: (await r.json()).detail });
      return;
    }
    Object.assign(session, await r.json());
    this.fleet = new FleetModel();
    // a view is shown once the session says what it may call: one shown before judged
    // by an empty list, and the history's, which decides at its mount whether it loads,
    // never loaded (a page opened at #/metrics)
    this.setState({ ready: true });
    const state = (s, method) => this.connection(s, method);
    this.unfollow = [
      follow("agents.watch", { interval: 1 }, {
        "agents.snapshot": (s) => this.changed(() => this.fleet.snapshot(s)),
        "agents.transition": (c) => this.changed(() => this.fleet.transition(c)),
        "agents.roster": (r) => this.changed(() => this.fleet.roster(r)),
        "agents.sample": (s) => this.changed(() => this.fleet.sample(s)),
      }, state),
      follow("stats.watch", { interval: 1 }, {
        "stats.sample": (stats) => {
          const r = this.state.route;
          record(stats, r.view === "agent" ? r.arg : null);
          const tenantOf = {};
          for (const [name, a] of Object.entries(stats.agents)) tenantOf[name] = a.tenant;
          this.setState({ tick: this.state.tick + 1, seen: Date.now(), tenantOf, agentStats: stats.agents });
          // both are shown in the fleet's view only, and read while it is shown (the
          // cluster's nodes are the operator's: no limited session is offered nodes.list)
          if (r.view === "fleet") {
            this.reread("tenants", "tenants.list", (x) => x.tenants);
            if (stats.cluster) this.reread("nodes", "nodes.list", (x) => x.nodes);
          }
        },
      }, state),
    ];
    // the inbox, followed whatever the view: the nav says how many asks wait. A session
    // without the approvals scope is not offered approvals.list, and its stream would be
    // refused: it is not followed
    if (session.methods.includes("approvals.list") && session.streams.includes("approvals.watch")) {
      this.inbox = new InboxModel();
      this.unfollow.push(follow("approvals.watch", {}, {
        "approvals.ask": (a) => this.inboxChanged(() => this.inbox.ask(a)),
        "approvals.missed": () => this.relist(),
      }, (s, method) => {
        if (s === "live") this.inboxChanged(() => this.inbox.reset());
        state(s, method);
      }));
    }
  }
  inboxChanged(apply) {
    apply();
    this.setState({ inboxTick: (this.state.inboxTick || 0) + 1 });
  }
  async relist() {
    try {
      const { asks } = await call("approvals.list");
      this.inboxChanged(() => this.inbox.relisted(asks));
    } catch (e) {
      this.setState({ error: `the inbox cannot be read again: ${e.message}` });
    }
  }
  componentWillUnmount() {
    for (const stop of this.unfollow || []) stop();
  }
  // the session ended (expired, logged out, its token revoked): the streams stop, and
  // the page asks for a login, saying why
  loggedOut(why) {
    for (const stop of this.unfollow || []) stop();
    this.setState({ login: why });
  }
  // A list no stream carries, read again as a stats.watch sample comes (one read at a
  // time): `key` in the state, its error in `${key}Error`. A refusal for want of a
  // session (a token revoked) is a login to ask for, as for the streams.
  async reread(key, method, pick) {
    // (a daemon that does not serve the method to the page is not asked)
    if (this.reading?.[key] || this.state.login || !session.methods.includes(method)) return;
    this.reading = { ...this.reading, [key]: true };
    try {
      const got = pick(await call(method));
      this.setState({ [key]: got, [`${key}Error`]: null });
    } catch (e) {
      if (e.status === 401) {
        this.loggedOut(`${method} was refused: ${e.message}`);
      } else {
        this.setState({ [`${key}Error`]: e.message });
      }
    } finally {
      this.reading = { ...this.reading, [key]: false };
    }
  }
  // An action of the fleet's (start, stop, restart, add): one at a time, its refusal shown
  // above the fleet; true when it was done. What it changed comes on the streams.
  async act(method, params) {
    this.setState({ busy: true, actionError: null });
    try {
      await call(method, params);
      return true;
    } catch (e) {
      this.setState({ actionError: e.message });
      return false;
    } finally {
      this.setState({ busy: false });
    }
  }
  // what the fleet's stream changed, shown once per frame however many changes came
  changed(apply) {
    apply();
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.setState({ status: { agents: [...this.fleet.rows] }, error: null, seen: Date.now() });
    });
  }
  async connection(s, method) {
    if (s === "closed") {
      // refused: a session that ended (a token revoked ends its streams at once) is a
      // login to ask for, saying which stream was refused
      const r = await fetch("session", { credentials: "same-origin" });
      if (r.status === 401) {
        this.loggedOut(`${method} was refused: unauthorized: ${(await r.json()).detail}`);
        return;
      }
    }
    this.setState({ error: s === "live" ? null : `the daemon's stream is ${s === "closed" ? "closed: trying again" : "reconnecting"}…` });
  }
  view() {
    const { route: r, status, range, tick } = this.state;
    switch (r.view) {
      case "agent": return html`<${Agent} name=${r.arg} status=${status} range=${range} tick=${tick}
        stats=${this.state.agentStats?.[r.arg]}
        roster=${this.fleet && this.fleet.rosters[r.arg]} setRange=${(x) => this.setState({ range: x })} />`;
      case "tasks": return html`<${Tasks} status=${status} />`;
      case "task": return html`<${Task} id=${r.arg} />`;
      case "runs": return html`<${Runs} />`;
      case "run": return html`<${Run} id=${r.arg} />`;
      case "metrics": return html`<${Metrics} range=${range} tick=${tick}
        setRange=${(x) => this.setState({ range: x })} />`;
      case "mcp": return html`<${Mcp} />`;
      case "audit": return html`<${Audit} />`;
      case "inbox": return html`<${Inbox} inbox=${this.inbox} tick=${this.state.inboxTick} focus=${r.arg}
        decided=${(a) => this.inboxChanged(() => this.inbox.ask(a))} />`;
      default: {
        const st = this.state;
        return html`${st.actionError && html`<div class="error" id="action-error">${st.actionError}</div>`}
          <${Fleet} status=${status} nodes=${st.nodes} nodesError=${st.nodesError}
          tenants=${st.tenants} tenantsError=${st.tenantsError} tenantOf=${st.tenantOf}
          agentStats=${st.agentStats} only=${r.view === "fleet" ? r.arg : null} grouped=${st.grouped}
          setGrouped=${(x) => this.setState({ grouped: x })}
          act=${(m, p) => this.act(m, p)} busy=${!!st.busy} />`;
      }
    }
  }
  render() {
    const { login, error, seen, route: r } = this.state;
    if (login) {
      return html`<section id="login"><h2>Not logged in</h2><p>${login}</p>
        <p>Run <code>corral ui</code> on the daemon's machine and open the link it prints.</p></section>`;
    }
    const stale = seen && Date.now() - seen > 5 * POLL_MS;
    return html`<header>
        <h1>corral</h1>
        <nav>${VIEWS.map(([v, label]) => html`<a href=${`#/${v}`} id=${`nav-${v}`}
          class=${r.view === v ? "current" : ""}>${label}${v === "inbox" && this.inbox?.pending.size
            ? ` (${this.inbox.pending.size})` : ""}</a>`)}</nav>
        <span class=${`live${stale ? " stale" : ""}`} id="live">${seen
          ? `live, updated ${new Date(seen).toLocaleTimeString()}` : "connecting…"}</span>
      </header>
      <main>${error && html`<div class="error">${error}</div>`}${this.state.ready
        ? this.view() : html`<p class="note" id="reading-session">Reading the session…</p>`}</main>`;
  }
}

const root = document.getElementById("app");
root.textContent = "";
render(html`<${App} />`, root);
