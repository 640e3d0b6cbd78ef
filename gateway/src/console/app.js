// The Clawgress console: a client of the same /v1/ API the CLI uses. The
// session cookie is HttpOnly; every change carries the session's CSRF token.
// Buttons follow the role `whoami` reports, but the server checks every call
// again, so hiding a button is a convenience, never the protection.
'use strict';

const PAGE_SIZE = 25;
const state = { me: null, tab: null, agents: [], policies: null, rotating: null, auditPage: 0, auditQuery: '', auditRows: [] };
const $ = (id) => document.getElementById(id);

class Stop extends Error {}
class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || ('HTTP ' + status));
    this.status = status;
    this.problem = problem;
  }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value;
    else if (key === 'on') for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren();
  if (!rows.length) tbody.append(el('tr', {}, el('td', { colspan: String(columns), class: 'muted' }, empty)));
  else tbody.append(...rows);
}

function when(text) {
  if (!text) return '';
  const at = new Date(text);
  if (Number.isNaN(at.getTime())) return text;
  return at.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z').replace('Z', ' UTC');
}

// Messages ------------------------------------------------------------------

function flash(kind, text, action) {
  const box = $('flash');
  box.className = kind;
  box.replaceChildren(text);
  if (action) box.append(el('button', { type: 'button', id: 'flash-action', class: 'secondary', on: { click: action.run } }, action.label));
  box.hidden = false;
}

function clearFlash() {
  $('flash').hidden = true;
  $('flash').replaceChildren();
}

// What went wrong, in the API's words: detail, located policy errors, hint;
// a stale version offers a reload (nothing was changed).
function showError(error) {
  if (error instanceof Stop) return;
  if (!(error instanceof ApiError)) {
    flash('error', 'The gateway could not be reached: ' + error.message);
    return;
  }
  const p = error.problem;
  let text = p.detail || ('The gateway answered ' + error.status);
  if (Array.isArray(p.errors) && p.errors.length > 1) {
    text += '\n' + p.errors.map((e) => `  line ${e.line}, column ${e.column}: ${e.message}`).join('\n');
  }
  if (p.hint) text += '\nHint: ' + p.hint;
  if (p.reason === 'version_conflict') {
    text = 'Someone else changed this first (now version ' + p.current_version + '); nothing was changed.\n' + (p.detail || '');
    flash('error', text, { label: 'Reload', run: () => { clearFlash(); show(state.tab); } });
    return;
  }
  if (p.reason === 'role_not_allowed' || p.reason === 'team_not_allowed') text = 'Not allowed: ' + text;
  flash('error', text);
}

// The API ------------------------------------------------------------------

async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.me) headers['X-Clawgress-CSRF'] = state.me.csrf;
  let response;
  try {
    response = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new Error(e.message);
  }
  const text = await response.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch { data = { detail: text }; }
  if (response.status === 401 && path !== '/console/login') {
    // The browser drops the cookie itself at its Max-Age, so a missing
    // token means the same as an expired session.
    loggedOut(state.me || data.reason === 'session_expired'
      ? 'Your session has expired or was ended. Log in again.'
      : (data.detail || 'Log in again.'));
    throw new Stop();
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Runs a change: a success message, then the page reloaded from the server
// (so what is shown is what is stored).
async function change(label, method, path, body, after) {
  clearFlash();
  try {
    const answer = await call(method, path, body);
    if (after) after(answer);
    else flash('ok', label);
    await show(state.tab, true);
    return answer;
  } catch (error) {
    showError(error);
    return null;
  }
}

// Login and roles -------------------------------------------------------------

function loggedOut(message) {
  state.me = null;
  document.body.dataset.role = '';
  $('nav').hidden = true;
  $('who').hidden = true;
  for (const section of document.querySelectorAll('main > section')) section.hidden = section.id !== 'login';
  if (message) flash('error', message);
  $('login-token').value = '';
  $('login-token').focus();
}

function loggedIn(me) {
  state.me = me;
  document.body.dataset.role = me.role;
  $('nav').hidden = false;
  $('who').hidden = false;
  $('whoami').textContent = `${me.name} · ${me.role}` + (me.teams.length ? ` · teams ${me.teams.join(', ')}` : '');
  // Buttons that could only be refused are not shown at all.
  for (const node of document.querySelectorAll('.needs-operate')) node.hidden = !me.can.operate;
  for (const node of document.querySelectorAll('.needs-maintain')) node.hidden = !me.can.maintain;
  for (const node of document.querySelectorAll('.needs-global')) if (!me.can.global) node.hidden = true;
}

async function login(event) {
  event.preventDefault();
  clearFlash();
  try {
    const me = await call('POST', '/console/login', { token: $('login-token').value });
    $('login-token').value = '';
    loggedIn(me);
    route();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) flash('error', 'That token is not accepted: ' + (error.problem.detail || ''));
    else showError(error);
  }
}

async function logout() {
  try { await call('POST', '/console/logout'); } catch (error) { if (!(error instanceof Stop)) showError(error); }
  loggedOut();
  flash('ok', 'Logged out.');
}

// Pages ---------------------------------------------------------------------

const pages = { agents: loadAgents, policies: loadPolicies, approvals: loadRequests, quotas: loadQuotas, audit: loadAudit };

async function show(tab, keepFlash) {
  if (!pages[tab]) tab = 'agents';
  state.tab = tab;
  for (const section of document.querySelectorAll('main > section')) section.hidden = section.id !== tab;
  for (const link of document.querySelectorAll('nav a[data-tab]')) link.classList.toggle('active', link.dataset.tab === tab);
  if (!keepFlash) clearFlash();
  try {
    await pages[tab]();
    document.body.dataset.loaded = tab;
  } catch (error) {
    showError(error);
  }
}

function route() {
  if (state.me) show(location.hash.replace('#', '') || 'agents');
}

function button(label, id, onClick, cls) {
  return el('button', { type: 'button', id, class: cls || '', on: { click: onClick } }, label);
}

// Agents.
async function loadAgents() {
  const { agents } = await call('GET', '/v1/agents');
  state.agents = agents;
  const can = state.me.can.operate;
  fill($('agents-table').tBodies[0], agents.map((a) => el('tr', { dataset: { agent: a.id } },
    el('td', {}, a.id), el('td', {}, a.team), el('td', {}, a.project), el('td', {}, a.environment), el('td', {}, a.role),
    el('td', {}, el('span', { class: 'pill ' + (a.disabled ? 'bad' : 'good') }, a.disabled ? 'disabled' : 'enabled')),
    el('td', {}, a.key_id || '—'),
    el('td', {}, a.previous_key_until ? `${a.previous_key_id} until ${when(a.previous_key_until)}` : ''),
    el('td', {}, a.version),
    el('td', { class: 'actions' }, can ? [
      button('Rotate key', `rotate-${a.id}`, () => startRotate(a)),
      a.disabled
        ? button('Enable', `enable-${a.id}`, () => setDisabled(a, false), 'secondary')
        : button('Disable', `disable-${a.id}`, () => setDisabled(a, true), 'danger'),
    ] : []),
  )), 'No agents in the store yet.', 10);
}

function startRotate(agent) {
  state.rotating = agent;
  $('agent-rotate-what').textContent = `Rotate the key of ${agent.id} (version ${agent.version}).`;
  $('agent-rotate').hidden = false;
}

async function rotate() {
  const agent = state.rotating;
  if (!agent) return;
  await change('', 'POST', `/v1/agents/${encodeURIComponent(agent.id)}/rotate`,
    { version: agent.version, grace: $('rotate-grace').value.trim() || '1h' },
    (answer) => {
      $('agent-rotate').hidden = true;
      state.rotating = null;
      const until = answer.previous_key_until ? ` The old key works until ${when(answer.previous_key_until)}.` : ' The old key stopped at once.';
      showKey(agent.id, answer.api_key, `New key for ${agent.id}.` + until);
    });
}

async function setDisabled(agent, disabled) {
  await change(`${agent.id} ${disabled ? 'disabled' : 'enabled'}.`, 'PATCH', `/v1/agents/${encodeURIComponent(agent.id)}`, { version: agent.version, disabled });
}

function showKey(id, key, text) {
  const box = $('agent-key');
  box.replaceChildren(el('strong', {}, text), ' Copy it now: it is shown once and only its SHA-256 is kept.', el('br'),
    el('code', { id: 'agent-key-value', dataset: { agent: id } }, key),
    ' ', button('Hide', 'agent-key-hide', () => { box.hidden = true; box.replaceChildren(); }, 'secondary'));
  box.hidden = false;
}

async function createAgent(event) {
  event.preventDefault();
  const value = (id) => $(id).value.trim();
  const body = { id: value('agent-id'), team: value('agent-team'), project: value('agent-project'), environment: value('agent-environment'), role: value('agent-role') };
  await change('', 'POST', '/v1/agents', body, (answer) => {
    $('agent-create').reset();
    showKey(body.id, answer.api_key, `Agent ${body.id} created.`);
  });
}

// Policies.
async function loadPolicies() {
  const p = await call('GET', '/v1/policies');
  state.policies = p;
  $('policy-state').textContent = p.active_id
    ? `Active: version ${p.active_id} (activation ${p.version}); in force here: ${p.in_force_here}, from the ${p.from}.`
    : `No store version is active; the policy file is in force here (${p.in_force_here}).`;
  const maintain = state.me.can.maintain && state.me.can.global;
  fill($('policies-table').tBodies[0], p.versions.slice().reverse().map((v) => el('tr', { dataset: { policy: String(v.id) } },
    el('td', {}, `v${v.id}`, v.id === p.active_id ? el('span', { class: 'pill good' }, ' active') : ''),
    el('td', {}, v.name), el('td', {}, v.digest), el('td', {}, when(v.created_at)), el('td', {}, v.created_by), el('td', {}, v.comment),
    el('td', { class: 'actions' },
      p.active_id && v.id !== p.active_id ? button('Diff with active', `diff-${v.id}`, () => diff(p.active_id, v.id), 'secondary') : '',
      maintain && v.id !== p.active_id ? button('Activate', `activate-${v.id}`, () => activate(v.id)) : ''),
  )), 'No versions uploaded yet.', 7);
  fill($('activations-table').tBodies[0], p.activations.map((a) => el('tr', {},
    el('td', {}, a.revision), el('td', {}, a.action), el('td', {}, `v${a.policy_id}`), el('td', {}, when(a.at)), el('td', {}, a.actor))),
  'Nothing activated yet.', 5);
  $('policy-rollback').disabled = !p.active_id;
}

async function diff(from, to) {
  try {
    const d = await call('GET', `/v1/policies/diff?from=${from}&to=${to}`);
    $('policy-diff-title').textContent = `v${from} → v${to}`;
    $('policy-diff-summary').textContent = d.summary || '';
    $('policy-diff-text').textContent = d.unified || '(no difference)';
    $('policy-diff').hidden = false;
  } catch (error) {
    showError(error);
  }
}

async function activate(id) {
  await change(`Version ${id} activated.`, 'POST', `/v1/policies/${id}/activate`, { version: state.policies.version });
}

async function rollback() {
  await change('', 'POST', '/v1/policies/rollback', { version: state.policies.version },
    (answer) => flash('ok', `Rolled back: version ${answer.active_id} is active.`));
}

async function upload(event) {
  event.preventDefault();
  const body = { name: $('policy-name').value.trim(), body: $('policy-body').value, comment: $('policy-comment').value };
  await change('', 'POST', '/v1/policies', body, (answer) => {
    $('policy-comment').value = '';
    const warnings = answer.warnings && answer.warnings.length ? '\nWarnings:\n' + answer.warnings.join('\n') : '';
    flash('ok', `Uploaded as version ${answer.id} (${answer.digest}); not active until activated.` + warnings);
  });
}

function loadFile() {
  const file = $('policy-file').files[0];
  if (!file) return;
  $('policy-name').value = file.name;
  file.text().then((text) => { $('policy-body').value = text; });
}

// Approvals.
async function loadRequests() {
  const { requests } = await call('GET', '/v1/requests');
  const maintain = state.me.can.maintain;
  requests.sort((a, b) => (a.status === 'pending' ? 0 : 1) - (b.status === 'pending' ? 0 : 1) || String(b.requested_at).localeCompare(String(a.requested_at)));
  fill($('requests-table').tBodies[0], requests.map((r) => {
    const reason = el('input', { id: `reason-${r.id}`, placeholder: 'reason', size: '18' });
    return el('tr', { dataset: { request: r.id } },
      el('td', {}, r.id), el('td', {}, r.domain), el('td', {}, (r.ports || []).join(', ')), el('td', {}, r.requested_by),
      el('td', {}, r.reason), el('td', {}, `${Math.round(r.duration_secs / 3600)}h`),
      el('td', {}, el('span', { class: 'pill ' + (r.status === 'approved' ? 'good' : r.status === 'rejected' ? 'bad' : '') }, r.status)),
      el('td', {}, r.decided_by || ''),
      el('td', { class: 'actions' }, maintain && r.status === 'pending' ? [
        reason,
        button('Approve', `approve-${r.id}`, () => decide(r, 'approve', reason.value)),
        button('Reject', `reject-${r.id}`, () => decide(r, 'reject', reason.value), 'danger'),
      ] : []));
  }), 'No requests.', 9);
}

async function decide(request, verdict, reason) {
  const body = reason.trim() ? { reason: reason.trim() } : {};
  await change(`Request ${request.id} for ${request.domain}: ${verdict === 'approve' ? 'approved' : 'rejected'}.`,
    'POST', `/v1/requests/${encodeURIComponent(request.id)}/${verdict}`, body);
}

// Quotas.
async function loadQuotas() {
  const q = await call('GET', '/v1/quotas');
  $('quotas-note').textContent = (q.note || '') + ` Policy in force: ${q.policy_version}.`;
  const money = (v) => (v === undefined || v === null ? '—' : Number(v).toFixed(4));
  fill($('quotas-table').tBodies[0], q.quotas.map((u) => el('tr', {},
    el('td', {}, u.scope), el('td', {}, u.id), el('td', {}, u.window), el('td', {}, u.mode),
    el('td', {}, u.spent_tokens), el('td', {}, u.limit_tokens ?? '—'), el('td', {}, money(u.spent_cost_usd)), el('td', {}, money(u.limit_cost_usd)),
    el('td', {}, u.policy_id))), 'No budget scopes.', 9);
}

// Audit search: the same GET /v1/audit that `clawgress audit search --admin` uses.
function auditQuery() {
  const params = new URLSearchParams();
  for (const key of ['agent', 'domain', 'decision', 'from', 'to']) {
    const value = $('audit-' + key).value.trim();
    if (value) params.set(key, value);
  }
  return params;
}

async function loadAudit() {
  const params = auditQuery();
  params.set('format', 'json');
  // One more than the page holds says whether there is a next page.
  params.set('limit', String((state.auditPage + 1) * PAGE_SIZE + 1));
  const records = await call('GET', '/v1/audit?' + params.toString());
  const start = state.auditPage * PAGE_SIZE;
  const rows = records.slice(start, start + PAGE_SIZE);
  state.auditRows = rows;
  $('audit-count').textContent = rows.length
    ? `Records ${start + 1}–${start + rows.length}${records.length > start + PAGE_SIZE ? ' (more follow)' : ''}, oldest first.`
    : 'No record matches.';
  fill($('audit-table').tBodies[0], rows.map((r, i) => el('tr', { class: 'clickable', dataset: { index: String(i) }, on: { click: () => openRecord(i) } },
    el('td', {}, start + i + 1), el('td', {}, when(r.timestamp)), el('td', {}, r.type || ''),
    el('td', {}, r.agent_id || r.actor || ''), el('td', {}, r.decision || r.action || ''),
    el('td', {}, (r.request && r.request.domain) || (r.details && r.details.domain) || ''),
    el('td', {}, (r.response && r.response.status) || (r.details && r.details.outcome) || ''))), 'No record matches.', 7);
  $('audit-page').textContent = `page ${state.auditPage + 1}`;
  $('audit-prev').disabled = state.auditPage === 0;
  $('audit-next').disabled = records.length <= start + PAGE_SIZE;
  $('audit-record').hidden = true;
}

// A record with its place in the hash chain: its own hash, and the hash of
// the line before it, which it seals.
function openRecord(i) {
  const r = state.auditRows[i];
  for (const row of $('audit-table').tBodies[0].rows) row.classList.toggle('selected', row.dataset.index === String(i));
  const chain = $('audit-chain');
  chain.replaceChildren(
    el('dt', {}, 'Position'), el('dd', {}, `result ${state.auditPage * PAGE_SIZE + i + 1} of this search`),
    el('dt', {}, 'Hash'), el('dd', { id: 'audit-hash' }, r.hash || '(not chained)'),
    el('dt', {}, 'Previous hash'), el('dd', { id: 'audit-prev-hash' }, r.prev_hash || '—'),
    el('dt', {}, 'Request id'), el('dd', {}, r.request_id || '—'),
    el('dt', {}, 'Policy version'), el('dd', {}, r.policy_version || '—'),
  );
  $('audit-json').textContent = JSON.stringify(r, null, 2);
  $('audit-record').hidden = false;
}

// Start ---------------------------------------------------------------------

async function start() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('agent-create').addEventListener('submit', createAgent);
  $('rotate-confirm').addEventListener('click', rotate);
  $('rotate-cancel').addEventListener('click', () => { $('agent-rotate').hidden = true; state.rotating = null; });
  $('policy-rollback').addEventListener('click', rollback);
  $('policy-upload').addEventListener('submit', upload);
  $('policy-file').addEventListener('change', loadFile);
  $('audit-form').addEventListener('submit', (event) => { event.preventDefault(); state.auditPage = 0; show('audit'); });
  $('audit-prev').addEventListener('click', () => { state.auditPage = Math.max(0, state.auditPage - 1); show('audit'); });
  $('audit-next').addEventListener('click', () => { state.auditPage += 1; show('audit'); });
  window.addEventListener('hashchange', route);
  try {
    const response = await fetch('/console/whoami', { credentials: 'same-origin' });
    if (response.ok) {
      loggedIn(await response.json());
      route();
    } else {
      const problem = await response.json().catch(() => ({}));
      loggedOut(problem.reason === 'session_expired' ? 'Your session has expired or was ended. Log in again.' : '');
    }
  } catch (error) {
    loggedOut('The gateway could not be reached: ' + error.message);
  }
}

document.addEventListener('DOMContentLoaded', start);
