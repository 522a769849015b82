/**
 * The admin console against the real service: a call placed by the simulated
 * Twilio (fake agent and ElevenLabs on loopback), then the page opened in
 * headless Chromium with the admin token. The timeline must list the call's states
 * in order with what was said, exactly the visited states and edges must carry the
 * highlight, and a screenshot must show the highlight colour on those states and
 * not on the others. Without the token every /admin route is refused.
 *
 * The screenshot is kept in test-results/admin-page.png for a human look.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callMachine } from '../../machines/call.machine.ts';
import { launchChromium } from '../../scripts/chromium.ts';
import { HIGHLIGHT_FILL } from '../../src/admin/admin-page.ts';
import { machineGraph } from '../../src/diagram/machine-graph.ts';
import type { CallRecord } from '../../src/store/call-store.ts';
import { startFakeAgent, type FakeAgent } from '../fakes/agent-server.ts';
import { startFakeElevenLabs, type FakeElevenLabs } from '../fakes/elevenlabs-server.ts';
import { ELEVENLABS_KEY, startService, type RunningService } from '../support/service.ts';
import { countColour, decodePng } from './png.ts';

const ADMIN_TOKEN = 'test-admin-token-0123456789abcdef';
const QUESTION = 'What are your opening hours?';
const REPLY = 'We are open from nine to five, Monday to Friday.';

let agent: FakeAgent;
let eleven: FakeElevenLabs;
let svc: RunningService;
let browser: Browser;
let record: CallRecord;

beforeAll(async () => {
  agent = await startFakeAgent({ behaviour: { kind: 'reply', answer: () => REPLY } });
  eleven = await startFakeElevenLabs({ apiKey: ELEVENLABS_KEY });
  svc = await startService({
    ADMIN_TOKEN,
    // The console counts as unsigned traffic (10 requests a second per address by
    // default, plenty for a person); these tests read it faster than anyone would.
    RATE_LIMIT_UNSIGNED_PER_ADDRESS_PER_SECOND: '1000',
    KOOZIE_AGENT_URI: agent.url,
    ELEVENLABS_API_KEY: ELEVENLABS_KEY,
    ELEVEN_VOICE_ID: 'voice-1',
    ELEVENLABS_BASE_URL: eleven.url,
  });
  const call = svc.call();
  await call.dial();
  await call.say(QUESTION);
  await call.say('Great, goodbye!');
  await call.hangUp('completed');
  record = (await svc.service.store.getRecord(call.callSid))!;
  browser = await launchChromium();
});

afterAll(async () => {
  // Chromium can be slow to exit on a loaded machine; don't let that fail the suite.
  await Promise.race([browser?.close(), new Promise((resolve) => setTimeout(resolve, 10_000).unref())]);
  await svc?.close();
  await agent?.close();
  await eleven?.close();
});

async function adminPage(): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 2600 } });
  // A browser sends no Bearer header by itself; this one adds it to every request, as a proxy would.
  await page.setExtraHTTPHeaders({ authorization: `Bearer ${ADMIN_TOKEN}` });
  return page;
}

describe('the admin page in a browser', () => {
  it('shows a real call’s path state by state, with timestamps and what was said', async () => {
    expect(record.path.map((p) => p.state)).toEqual([
      'greeting', 'speaking', 'listening', 'thinking', 'speaking', 'listening', 'speaking', 'terminating', 'ended',
    ]);
    const page = await adminPage();
    const response = await page.goto(`${svc.address}/admin?call=${record.callSid}`);
    expect(response?.status()).toBe(200);

    const rows = page.locator('#timeline tbody tr');
    expect(await rows.locator('td.state').allTextContents()).toEqual(record.path.map((p) => p.state));
    const times = await rows.locator('time').evaluateAll((els) => els.map((e) => e.getAttribute('datetime')));
    expect(times).toEqual(record.path.map((p) => new Date(p.at).toISOString()));
    const thinking = rows.nth(3);
    expect(await thinking.locator('td.said').textContent()).toBe(`Caller: “${QUESTION}”`);
    expect(await thinking.locator('td.via').textContent()).toBe('SPEECH [else]');
    expect(await rows.nth(4).locator('td.said').textContent()).toBe(`Agent: “${REPLY}”`);
    // Both guarded arrows go listening → speaking on SPEECH: the stored path cannot tell which held (the end reason can).
    expect(await rows.nth(6).locator('td.via').textContent()).toBe('SPEECH [callerSaysGoodbye] or SPEECH [turnsUsedUp]');
    expect(await rows.nth(8).locator('td.said').textContent()).toBe('Call completed (goodbye)');
    await page.close();
  });

  it('highlights exactly the states and edges the call went through, visibly', async () => {
    const page = await adminPage();
    await page.goto(`${svc.address}/admin?call=${record.callSid}`);

    const visitedStates = await page.locator('#diagram g.node.visited').evaluateAll((els) => els.map((e) => e.getAttribute('data-state')));
    const expectedStates = [...new Set(record.path.map((p) => p.state))];
    expect(visitedStates.sort()).toEqual([...expectedStates].sort());
    const graph = machineGraph(callMachine);
    const unvisited = graph.states.map((s) => s.id).filter((s) => !expectedStates.includes(s));
    expect(unvisited).toEqual(['errorFallback', 'replying']);

    const visitedEdges = await page.locator('#diagram path.visited').evaluateAll((els) => els.map((e) => e.getAttribute('data-machine-edge')));
    expect(visitedEdges.sort()).toEqual(
      [
        'greeting|always|0',
        'speaking|xstate.done.actor.voice|2',
        'listening|SPEECH|2',
        'thinking|xstate.done.actor.agent|0',
        'listening|SPEECH|0',
        'listening|SPEECH|1',
        'speaking|xstate.done.actor.voice|0',
        'terminating|HANGUP|0',
      ].sort(),
    );

    const screenshot = await page.locator('#diagram').screenshot();
    mkdirSync('test-results', { recursive: true });
    writeFileSync('test-results/admin-page.png', await page.screenshot({ fullPage: true }));
    const diagram = decodePng(screenshot);
    let visitedArea = 0;
    for (const state of graph.states.map((s) => s.id)) {
      const node = decodePng(await page.locator(`#diagram g.node[data-state="${state}"]`).screenshot());
      const share = countColour(node, HIGHLIGHT_FILL) / (node.width * node.height);
      if (expectedStates.includes(state)) visitedArea += node.width * node.height;
      if (expectedStates.includes(state)) expect(share, state).toBeGreaterThan(0.3);
      else expect(share, state).toBe(0);
    }
    // The visited boxes, seen in the whole diagram: at least a third of their area is the highlight.
    expect(countColour(diagram, HIGHLIGHT_FILL)).toBeGreaterThan(visitedArea * 0.3);
    await page.close();
  });

  it('lists recent calls and opens one from the list', async () => {
    const page = await adminPage();
    await page.goto(`${svc.address}/admin`);
    expect(await page.locator('#diagram g.node.visited').count()).toBe(0);
    await page.locator(`#calls a[href="/admin?call=${record.callSid}"]`).click();
    await page.waitForURL(`**/admin?call=${record.callSid}`);
    expect(await page.locator('#call h2').textContent()).toBe(`Call ${record.callSid}`);
    expect(await page.locator('#timeline tbody tr').count()).toBe(record.path.length);
    await page.close();
  });
});

describe('the admin page with hostile words', () => {
  const LONG_WORD = 'x'.repeat(1_800);
  // Caller words that would read "I owe you 100$" backwards-rendered as "$001": a right-to-left override.
  const SPOOFED = 'I owe you \u202E$001\u202C dollars';

  it('strips bidirectional controls from caller words, shows an agent’s as visible marks, and wraps an 1,800-character word', async () => {
    const hostileAgent = await startFakeAgent({ behaviour: { kind: 'reply', answer: () => 'Noted \u2067reversed\u2069 and \u200Fmarked.' } });
    const hostile = await startService({ ADMIN_TOKEN, KOOZIE_AGENT_URI: hostileAgent.url });
    try {
      const call = hostile.call();
      await call.dial();
      await call.say(SPOOFED);
      await call.say(LONG_WORD);
      const stored = (await hostile.service.store.getRecord(call.callSid))!;
      expect(stored.turns[0]?.caller).toBe('I owe you $001 dollars');
      expect(stored.turns[1]?.caller).toBe(LONG_WORD);

      const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
      await page.setExtraHTTPHeaders({ authorization: `Bearer ${ADMIN_TOKEN}` });
      await page.goto(`${hostile.address}/admin?call=${call.callSid}`);
      const said = await page.locator('#timeline td.said').allTextContents();
      expect(said).toContain('Caller: “I owe you $001 dollars”');
      expect(said).toContain('Agent: “Noted ⟨U+2067⟩reversed⟨U+2069⟩ and ⟨U+200F⟩marked.”');
      expect(said.join('')).not.toMatch(/[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/);
      // The page is as wide as the window: the long word wraps inside its cell.
      const width = await page.evaluate(() => document.documentElement.scrollWidth);
      expect(width).toBeLessThanOrEqual(1400);
      await page.close();
    } finally {
      await hostile.close();
      await hostileAgent.close();
    }
  });
});

describe('admin access', () => {
  const routes = () => [
    '/admin',
    '/admin/',
    `/admin?call=${record.callSid}`,
    '/admin/api/calls',
    `/admin/api/calls/${record.callSid}`,
    '/admin/not-a-route',
  ];

  it('refuses every /admin route without the token, with a wrong one, or with another scheme', async () => {
    const wrong: Array<Record<string, string>> = [
      {},
      { authorization: `Bearer ${ADMIN_TOKEN}x` },
      { authorization: `Bearer ${ADMIN_TOKEN.slice(0, -1)}` },
      { authorization: 'Bearer ' },
      { authorization: `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}` },
      { authorization: ADMIN_TOKEN },
    ];
    for (const route of routes()) {
      for (const headers of wrong) {
        const response = await fetch(svc.address + route, { headers });
        expect(response.status, `${route} ${JSON.stringify(headers)}`).toBe(401);
        expect(response.headers.get('www-authenticate')).toBe('Bearer realm="admin"');
        expect(await response.text()).not.toContain(record.callSid);
      }
    }
  });

  it('answers with the token', async () => {
    const ok = { authorization: `Bearer ${ADMIN_TOKEN}` };
    for (const route of routes().slice(0, 5)) {
      expect((await fetch(svc.address + route, { headers: ok })).status, route).toBe(200);
    }
    expect((await fetch(`${svc.address}/admin/not-a-route`, { headers: ok })).status).toBe(404);
    const page = await fetch(`${svc.address}/admin`, { headers: ok });
    expect(page.headers.get('content-security-policy')).toContain("default-src 'none'");
    expect(page.headers.get('cache-control')).toBe('no-store');
  });

  it('turns the console off (404 on every route) when ADMIN_TOKEN is not set', async () => {
    const off = await startService({ KOOZIE_AGENT_URI: agent.url });
    try {
      for (const route of routes()) {
        const response = await fetch(off.address + route, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
        expect(response.status, route).toBe(404);
        expect(await response.text()).toMatch(/admin console is off|Not Found/);
      }
      expect(await (await fetch(`${off.address}/admin`)).text()).toBe('Not Found: the admin console is off (ADMIN_TOKEN is not set)');
    } finally {
      await off.close();
    }
  });
});

describe('admin API', () => {
  const get = (path: string) => fetch(svc.address + path, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });

  it('lists stored calls as summaries, filtered by number and time', async () => {
    const all = (await (await get('/admin/api/calls')).json()) as { calls: Array<Record<string, unknown>> };
    expect(all.calls.map((c) => c.callSid)).toEqual([record.callSid]);
    // A list carries summaries: how many turns, not the turns themselves (GET /admin/api/calls/:callSid has them).
    expect(all.calls[0]).toMatchObject({ turnCount: record.turns.length, state: record.state });
    expect(all.calls[0]).not.toHaveProperty('turns');
    expect(all.calls[0]).not.toHaveProperty('path');
    const byNumber = (await (await get(`/admin/api/calls?number=${encodeURIComponent(record.from)}&limit=5`)).json()) as { calls: CallRecord[] };
    expect(byNumber.calls).toHaveLength(1);
    const other = (await (await get('/admin/api/calls?number=%2B19999999999')).json()) as { calls: CallRecord[] };
    expect(other.calls).toHaveLength(0);
    const later = new Date(record.startedAt + 1).toISOString();
    const since = (await (await get(`/admin/api/calls?since=${encodeURIComponent(later)}`)).json()) as { calls: CallRecord[] };
    expect(since.calls).toHaveLength(0);
    const until = (await (await get(`/admin/api/calls?until=${record.startedAt + 1}`)).json()) as { calls: CallRecord[] };
    expect(until.calls).toHaveLength(1);
  });

  it('returns one call record, and says what is wrong with a bad query', async () => {
    const one = (await (await get(`/admin/api/calls/${record.callSid}`)).json()) as CallRecord;
    expect(one).toEqual(record);
    expect((await get(`/admin/api/calls/CA${'f'.repeat(32)}`)).status).toBe(404);
    for (const bad of ['/admin/api/calls/not-a-sid', '/admin/api/calls?limit=0', '/admin/api/calls?since=yesterday', '/admin/api/calls?number=%3Cscript%3E', '/admin?call=nope']) {
      const response = await get(bad);
      expect(response.status, bad).toBe(400);
      expect(await response.text()).toMatch(/^Bad Request: /);
    }
  });
});
