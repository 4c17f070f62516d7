// Test driver: one centrifuge-js client controlled through JSON lines.
//
// Usage:   node driver.mjs <ws-url>
// Options: env FUGATO_DRIVER_OPTIONS, a JSON object. Every key except the ones below is passed to the
//          Centrifuge constructor as is (minReconnectDelay, maxReconnectDelay, timeout, name, debug, ...).
//            "protocol": "json" (default) | "protobuf"  - which centrifuge-js build/codec to use
//            "trace": true                            - also report every WebSocket frame
//                                                        ({"event":"frame_out"|"frame_in","data":...})
//            "transports": [{"transport": "http_stream"|"sse"|"websocket", "endpoint": <url>}, ...]
//                                                      - connect through this list instead of <ws-url> (the
//                                                        SDK's fallback list; also pass "emulationEndpoint").
//                                                        SSE uses the "eventsource" package's EventSource.
//
// stdin:  one command per line, {"op": "...", "id": <any JSON, optional>, ...args}.
// stdout: one JSON object per line. Every line has "event" and a strictly increasing "seq".
//   * a command's outcome: {"event":"result","id":..,"op":..,"ok":true,"value":..}
//                     or   {"event":"result","id":..,"op":..,"ok":false,"error":{"code":..,"message":..}}
//     Errors raised by the driver itself (bad JSON, unknown op, missing argument) use code -1.
//   * client events:  connecting {code,reason} | connected {client,transport,data} | disconnected {code,reason}
//                     state {newState,oldState} | message {data} | error {type,error}
//                     get_token {n,channel?} (a getToken callback was invoked; n counts from 0)
//   * subscription events (all carry "channel"):
//                     subscribing {code,reason} | subscribed {recoverable,positioned,streamPosition,
//                     wasRecovering,recovered,hasRecoveredPublications,data} | unsubscribed {code,reason}
//                     publication {data,offset,info,tags} | join {info} | leave {info} | sub_error {type,error}
//                     sub_state {newState,oldState}
//     Publications recovered on subscribe arrive as "publication" events right after "subscribed"
//     (that is how centrifuge-js delivers them); with "trace" the raw reply is visible too.
//   * server-side subscriptions: server_subscribed | server_subscribing | server_unsubscribed |
//                     server_publication | server_join | server_leave
//   * driver_error {message} for anything unexpected (an unhandled rejection, say); the driver keeps going.
//   * ready {url} once, at start.
//
// Commands (arguments in brackets are optional). Any command may carry "callTimeout" (ms): its result is then
// an error (code -1) if it has no outcome in that time. "wait"ing commands take "waitTimeout" (ms, default 5000).
//   connect   [token] [data] [getToken: [tok | {"error": msg} | {"unauthorized": true}, ...]] [wait]
//             Sets token/data/getToken, calls connect(). With "wait": true the result comes once the
//             client is connected (value = {client}); otherwise right away.
//             getToken returns the listed tokens one per call; an exhausted list rejects.
//   subscribe channel [token] [getToken: [...]] [data] [joinLeave] [recoverable] [positioned]
//             [delta: "fossil"] [since: {offset, epoch}] [minResubscribeDelay] [maxResubscribeDelay] [wait]
//             [tagsFilter: FilterNode]
//             [getState: [{offset, epoch}, ...]]  the getState callback's answers, one per call (each call
//             is reported as {"event":"get_state","n":..,"channel":..})
//             Creates the subscription on first use (options apply then), calls subscribe().
//   unsubscribe channel [remove]         remove: also drop it from the client's registry
//   publish   channel data [via: "sub"|"client"]   default: the subscription if one exists, else the client
//   presence | presence_stats  channel [via]
//   history   channel [limit] [since] [reverse] [via]
//   rpc       method [data]
//   send      data
//   ready     [channel] [waitTimeout]     client.ready() or sub.ready() (waitTimeout in ms, default 5000)
//   set_token token | set_data data | add_tokens tokens [channel]  (append to a getToken list)
//   batch_start | batch_stop | state | disconnect | exit
//   map_subscribe channel [kind: "map"|"clients"|"users"] [pageSize] [unrecoverableStrategy] [data]
//             [tagsFilter] [delta: "fossil"] [wait]   a map subscription (newMapSubscription,
//             newMapClientsSubscription or newMapUsersSubscription); its events:
//             map_subscribed {channel,recovered,recoverable,state} | map_sync {channel,entries} |
//             map_update {channel,key,data,removed,offset} | map_unsubscribed {channel,code,reason} |
//             map_error {channel,type,error}   (subscribing events are the stream ones: subscribing)
//   map_unsubscribe channel | map_publish channel key data [via: "sub"|"client"] | map_remove channel key [via]
//   sp_subscribe channel [signUrl] [signUser] [token] [delta: "fossil"] [wait]   a shared poll subscription; getSignature POSTs
//             {channel, user: signUser, keys} to signUrl (the application backend) and returns its JSON. Events:
//             sp_subscribed {channel} | sp_update {channel,key,data,version,removed} |
//             sp_unsubscribed {channel,code,reason} | sp_error {channel,type,error}   (and subscribing)
//   sp_track channel keys | sp_track channel items signature   | sp_untrack channel keys
//   sp_unsubscribe channel | sp_tracked channel (-> the tracked keys) | sp_delta_stats channel (its deltaStats())
//   map_delta_stats channel    the subscription's deltaStats() (numFullPayloads, numDeltaPayloads, bytes...)

import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';

const url = process.argv[2];
let seq = 0;

function plain(value, seen = new WeakSet()) {
  if (value === undefined || typeof value === 'function' || typeof value === 'symbol') return undefined;
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'number') return Number.isFinite(value) ? value : String(value);
  if (typeof value === 'bigint') return Number(value);
  if (value instanceof Uint8Array) return { __bytes__: Buffer.from(value).toString('base64') };
  if (typeof value !== 'object') return String(value);
  if (seen.has(value)) return '[circular]';
  seen.add(value);
  let out;
  if (Array.isArray(value)) {
    out = value.map((item) => {
      const p = plain(item, seen);
      return p === undefined ? null : p;
    });
  } else {
    out = {};
    if (value instanceof Error) {
      out.message = value.message;
      out.name = value.name;
    }
    for (const [key, item] of Object.entries(value)) {
      const p = plain(item, seen);
      if (p !== undefined) out[key] = p;
    }
  }
  seen.delete(value);
  return out;
}

function emit(event, fields = {}) {
  seq += 1;
  let line;
  try {
    line = JSON.stringify({ ...plain(fields), event, seq });
  } catch (e) {
    line = JSON.stringify({ event: 'driver_error', seq, message: `cannot serialize ${event}: ${e}` });
  }
  process.stdout.write(line + '\n');
}

function errorObject(err) {
  if (err === null || err === undefined) return { code: -1, message: String(err) };
  const code = typeof err.code === 'number' ? err.code : -1;
  const message = typeof err.message === 'string' ? err.message : String(err);
  const out = { code, message };
  if (err.temporary) out.temporary = true;
  return out;
}

class DriverError extends Error {
  constructor(message) {
    super(message);
    this.code = -1;
  }
}

process.on('unhandledRejection', (reason) => emit('driver_error', { message: `unhandled rejection: ${errorObject(reason).message}` }));
process.on('uncaughtException', (err) => emit('driver_error', { message: `uncaught exception: ${err && err.stack ? err.stack : err}` }));

let driverOptions = {};
try {
  driverOptions = JSON.parse(process.env.FUGATO_DRIVER_OPTIONS || '{}');
} catch (e) {
  emit('driver_error', { message: `FUGATO_DRIVER_OPTIONS is not JSON: ${e.message}` });
}
const { protocol = 'json', trace = false, transports = null, ...centrifugeOptions } = driverOptions;

const lib = protocol === 'protobuf' ? await import('centrifuge/build/protobuf') : await import('centrifuge');
const { Centrifuge } = lib;

class TracingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener('message', (ev) => {
      const data = typeof ev.data === 'string' ? ev.data : { __bytes__: Buffer.from(ev.data).toString('base64') };
      emit('frame_in', { data });
    });
    this.addEventListener('close', (ev) => emit('ws_close', { code: ev.code, reason: ev.reason }));
  }

  send(data, ...rest) {
    emit('frame_out', { data: typeof data === 'string' ? data : { __bytes__: Buffer.from(data).toString('base64') } });
    return super.send(data, ...rest);
  }
}

// A getToken callback backed by a list the tests fill; each call takes the next entry.
function tokenSource(label, channel) {
  const source = { entries: [], used: 0 };
  source.fn = () => {
    const n = source.used;
    emit('get_token', channel === undefined ? { n, source: label } : { n, source: label, channel });
    if (n >= source.entries.length) {
      return Promise.reject(new Error(`getToken list exhausted after ${n} tokens`));
    }
    source.used += 1;
    const entry = source.entries[n];
    if (entry && typeof entry === 'object') {
      if (entry.unauthorized) return Promise.reject(new Centrifuge.UnauthorizedError(entry.message || 'unauthorized'));
      return Promise.reject(new Error(entry.error || 'getToken failed'));
    }
    return Promise.resolve(entry === null || entry === undefined ? '' : String(entry));
  };
  return source;
}

let client = null;
let clientTokens = null;
const subTokens = new Map();

function getClient() {
  if (client !== null) return client;
  const options = { ...centrifugeOptions, websocket: trace ? TracingWebSocket : WebSocket };
  if (transports !== null && transports.some((t) => t.transport === 'sse')) {
    options.eventsource = EventSource;
  }
  client = new Centrifuge(transports !== null ? transports : url, options);
  client.on('state', (ctx) => emit('state', ctx));
  client.on('connecting', (ctx) => emit('connecting', ctx));
  client.on('connected', (ctx) => emit('connected', ctx));
  client.on('disconnected', (ctx) => emit('disconnected', ctx));
  client.on('message', (ctx) => emit('message', ctx));
  client.on('error', (ctx) => emit('error', { type: ctx.type, error: errorObject(ctx.error), transport: ctx.transport }));
  client.on('subscribed', (ctx) => emit('server_subscribed', ctx));
  client.on('subscribing', (ctx) => emit('server_subscribing', ctx));
  client.on('unsubscribed', (ctx) => emit('server_unsubscribed', ctx));
  client.on('publication', (ctx) => emit('server_publication', ctx));
  client.on('join', (ctx) => emit('server_join', ctx));
  client.on('leave', (ctx) => emit('server_leave', ctx));
  return client;
}

function need(cmd, name) {
  if (cmd[name] === undefined || cmd[name] === null) throw new DriverError(`"${cmd.op}" needs "${name}"`);
  return cmd[name];
}

function toData(cmd) {
  if (cmd.data_b64 !== undefined) return new Uint8Array(Buffer.from(cmd.data_b64, 'base64'));
  if (protocol === 'protobuf' && typeof cmd.data === 'string') return new TextEncoder().encode(cmd.data);
  return cmd.data === undefined ? null : cmd.data;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new DriverError(`${what}: no outcome within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function getSub(channel) {
  return getClient().getSubscription(channel);
}

function newSub(cmd) {
  const channel = need(cmd, 'channel');
  const options = {};
  for (const key of ['token', 'data', 'joinLeave', 'recoverable', 'positioned', 'delta', 'since',
    'minResubscribeDelay', 'maxResubscribeDelay', 'tagsFilter']) {
    if (cmd[key] !== undefined) options[key] = cmd[key];
  }
  if (cmd.getState !== undefined) {
    // The app's getState callback: each call returns the next listed stream position {offset, epoch}.
    const positions = need(cmd, 'getState');
    let calls = 0;
    options.getState = () => {
      const n = calls++;
      emit('get_state', { n, channel });
      if (n >= positions.length) return Promise.reject(new Error(`getState list exhausted after ${n} calls`));
      return Promise.resolve(positions[n]);
    };
  }
  if (cmd.getToken !== undefined) {
    const source = tokenSource('subscription', channel);
    source.entries.push(...need(cmd, 'getToken'));
    subTokens.set(channel, source);
    options.getToken = source.fn;
  }
  const sub = getClient().newSubscription(channel, options);
  sub.on('state', (ctx) => emit('sub_state', { channel, ...ctx }));
  sub.on('subscribing', (ctx) => emit('subscribing', { channel, ...ctx }));
  sub.on('subscribed', (ctx) => emit('subscribed', { channel, ...ctx }));
  sub.on('unsubscribed', (ctx) => emit('unsubscribed', { channel, ...ctx }));
  sub.on('publication', (ctx) => emit('publication', { channel, ...ctx }));
  sub.on('join', (ctx) => emit('join', { channel, ...ctx }));
  sub.on('leave', (ctx) => emit('leave', { channel, ...ctx }));
  sub.on('error', (ctx) => emit('sub_error', { channel, type: ctx.type, error: errorObject(ctx.error) }));
  return sub;
}

// The subscription to use for a channel-scoped call, or null to call the client method.
function target(cmd) {
  const channel = need(cmd, 'channel');
  const sub = getSub(channel);
  if (cmd.via === 'sub') {
    if (sub === null) throw new DriverError(`no subscription to ${channel}`);
    return sub;
  }
  if (cmd.via === 'client') return null;
  if (cmd.via !== undefined) throw new DriverError(`"via" must be "sub" or "client"`);
  return sub;
}

const ops = {
  async connect(cmd) {
    const c = getClient();
    if (cmd.token !== undefined) c.setToken(cmd.token);
    if (cmd.data !== undefined) c.setData(cmd.data);
    if (cmd.getToken !== undefined) {
      clientTokens = tokenSource('connection');
      clientTokens.entries.push(...cmd.getToken);
      // getToken is a constructor option; the client reads it from its config at call time.
      c._config.getToken = clientTokens.fn;
    }
    c.connect();
    if (cmd.wait) {
      await c.ready(cmd.waitTimeout ?? 5000);
      return { client: c._client };
    }
    return null;
  },
  async subscribe(cmd) {
    const sub = getSub(need(cmd, 'channel')) || newSub(cmd);
    sub.subscribe();
    if (cmd.wait) await sub.ready(cmd.waitTimeout ?? 5000);
    return { state: sub.state };
  },
  async unsubscribe(cmd) {
    const sub = getSub(need(cmd, 'channel'));
    if (sub === null) throw new DriverError(`no subscription to ${cmd.channel}`);
    sub.unsubscribe();
    if (cmd.remove) getClient().removeSubscription(sub);
    return { state: sub.state };
  },
  async publish(cmd) {
    const sub = target(cmd);
    const data = toData(cmd);
    return sub ? sub.publish(data) : getClient().publish(cmd.channel, data);
  },
  async presence(cmd) {
    const sub = target(cmd);
    return sub ? sub.presence() : getClient().presence(cmd.channel);
  },
  async presence_stats(cmd) {
    const sub = target(cmd);
    return sub ? sub.presenceStats() : getClient().presenceStats(cmd.channel);
  },
  async history(cmd) {
    const sub = target(cmd);
    const options = {};
    for (const key of ['limit', 'since', 'reverse']) {
      if (cmd[key] !== undefined) options[key] = cmd[key];
    }
    return sub ? sub.history(options) : getClient().history(cmd.channel, options);
  },
  async rpc(cmd) {
    return getClient().rpc(need(cmd, 'method'), toData(cmd));
  },
  async send(cmd) {
    await getClient().send(toData(cmd));
    return null;
  },
  async ready(cmd) {
    if (cmd.channel !== undefined) {
      const sub = getSub(cmd.channel);
      if (sub === null) throw new DriverError(`no subscription to ${cmd.channel}`);
      await sub.ready(cmd.waitTimeout ?? 5000);
      return { state: sub.state };
    }
    await getClient().ready(cmd.waitTimeout ?? 5000);
    return { state: getClient().state };
  },
  async set_token(cmd) {
    getClient().setToken(need(cmd, 'token'));
    return null;
  },
  async set_data(cmd) {
    getClient().setData(toData(cmd));
    return null;
  },
  async add_tokens(cmd) {
    const tokens = need(cmd, 'tokens');
    const source = cmd.channel === undefined ? clientTokens : subTokens.get(cmd.channel);
    if (!source) throw new DriverError('no getToken list to add to (pass getToken on connect/subscribe first)');
    source.entries.push(...tokens);
    return { remaining: source.entries.length - source.used };
  },
  async batch_start() {
    getClient().startBatching();
    return null;
  },
  async batch_stop() {
    getClient().stopBatching();
    return null;
  },
  async state() {
    const c = getClient();
    const subs = {};
    for (const [channel, sub] of Object.entries(c.subscriptions())) subs[channel] = sub.state;
    return { state: c.state, client: c._client, subs };
  },
  async disconnect() {
    getClient().disconnect();
    return null;
  },
  async map_subscribe(cmd) {
    const channel = need(cmd, 'channel');
    let sub = getClient().getMapSubscription(channel);
    if (sub === null) {
      const options = {};
      for (const key of ['pageSize', 'unrecoverableStrategy', 'data', 'token', 'tagsFilter', 'delta']) {
        if (cmd[key] !== undefined) options[key] = cmd[key];
      }
      const c = getClient();
      const kinds = { map: c.newMapSubscription, clients: c.newMapClientsSubscription,
        users: c.newMapUsersSubscription };
      const make = kinds[cmd.kind ?? 'map'];
      if (make === undefined) throw new DriverError(`unknown map subscription kind ${cmd.kind}`);
      sub = make.call(c, channel, options);
      sub.on('subscribing', (ctx) => emit('subscribing', { channel, ...ctx }));
      sub.on('subscribed', (ctx) => emit('map_subscribed', {
        channel, recovered: ctx.recovered, recoverable: ctx.recoverable, state: ctx.state }));
      sub.on('sync', (ctx) => emit('map_sync', { channel, entries: ctx.entries }));
      sub.on('update', (ctx) => emit('map_update', { channel, ...ctx }));
      sub.on('unsubscribed', (ctx) => emit('map_unsubscribed', { channel, ...ctx }));
      sub.on('error', (ctx) => emit('map_error', { channel, type: ctx.type, error: errorObject(ctx.error) }));
    }
    sub.subscribe();
    if (cmd.wait) await sub.ready(cmd.waitTimeout ?? 5000);
    return { state: sub.state };
  },
  async sp_subscribe(cmd) {
    const channel = need(cmd, 'channel');
    let sub = getClient().getSharedPollSubscription(channel);
    if (sub === null) {
      const options = {};
      if (cmd.token !== undefined) options.token = cmd.token;
      if (cmd.delta !== undefined) options.delta = cmd.delta;
      if (cmd.signUrl !== undefined) {
        options.getSignature = async (ctx) => {
          const resp = await fetch(cmd.signUrl, {
            method: 'POST', headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ channel, user: cmd.signUser ?? '', keys: ctx.keys }) });
          if (!resp.ok) throw new Error(`sign endpoint answered ${resp.status}`);
          return resp.json();
        };
      }
      sub = getClient().newSharedPollSubscription(channel, options);
      sub.on('subscribing', (ctx) => emit('subscribing', { channel, ...ctx }));
      sub.on('subscribed', () => emit('sp_subscribed', { channel }));
      sub.on('update', (ctx) => emit('sp_update', { channel, ...ctx }));
      sub.on('unsubscribed', (ctx) => emit('sp_unsubscribed', { channel, ...ctx }));
      sub.on('error', (ctx) => emit('sp_error', { channel, type: ctx.type, error: errorObject(ctx.error) }));
    }
    sub.subscribe();
    if (cmd.wait) await sub.ready(cmd.waitTimeout ?? 5000);
    return { state: sub.state };
  },
  async sp_track(cmd) {
    const sub = getClient().getSharedPollSubscription(need(cmd, 'channel'));
    if (sub === null) throw new DriverError(`no shared poll subscription to ${cmd.channel}`);
    if (cmd.items !== undefined) sub.track(cmd.items, need(cmd, 'signature'));
    else sub.track(need(cmd, 'keys'));
    return null;
  },
  async sp_untrack(cmd) {
    const sub = getClient().getSharedPollSubscription(need(cmd, 'channel'));
    if (sub === null) throw new DriverError(`no shared poll subscription to ${cmd.channel}`);
    sub.untrack(need(cmd, 'keys'));
    return null;
  },
  async sp_unsubscribe(cmd) {
    const sub = getClient().getSharedPollSubscription(need(cmd, 'channel'));
    if (sub === null) throw new DriverError(`no shared poll subscription to ${cmd.channel}`);
    sub.unsubscribe();
    return { state: sub.state };
  },
  async sp_tracked(cmd) {
    const sub = getClient().getSharedPollSubscription(need(cmd, 'channel'));
    if (sub === null) throw new DriverError(`no shared poll subscription to ${cmd.channel}`);
    return [...sub.trackedKeys()].sort();
  },
  async sp_delta_stats(cmd) {
    const sub = getClient().getSharedPollSubscription(need(cmd, 'channel'));
    if (sub === null) throw new DriverError(`no shared poll subscription to ${cmd.channel}`);
    return sub.deltaStats();
  },
  async map_delta_stats(cmd) {
    const sub = getClient().getMapSubscription(need(cmd, 'channel'));
    if (sub === null) throw new DriverError(`no map subscription to ${cmd.channel}`);
    return sub.deltaStats();
  },
  async map_unsubscribe(cmd) {
    const sub = getClient().getMapSubscription(need(cmd, 'channel'));
    if (sub === null) throw new DriverError(`no map subscription to ${cmd.channel}`);
    sub.unsubscribe();
    return { state: sub.state };
  },
  async map_publish(cmd) {
    const channel = need(cmd, 'channel');
    const sub = getClient().getMapSubscription(channel);
    const key = need(cmd, 'key');
    if (sub !== null && cmd.via !== 'client') return sub.publish(key, toData(cmd));
    return getClient().mapPublish(channel, key, toData(cmd));
  },
  async map_remove(cmd) {
    const channel = need(cmd, 'channel');
    const sub = getClient().getMapSubscription(channel);
    const key = need(cmd, 'key');
    if (sub !== null && cmd.via !== 'client') return sub.remove(key);
    return getClient().mapRemove(channel, key);
  },
};

let exiting = false;

// Lets the commands sent before report their outcome (for at most a second: some may wait forever), then exits.
async function shutdown(id) {
  if (exiting) return;
  exiting = true;
  const others = [...pending];
  await Promise.race([Promise.allSettled(others), new Promise((resolve) => setTimeout(resolve, 1000))]);
  if (client !== null) client.disconnect();
  if (id !== undefined) emit('result', { id, op: 'exit', ok: true, value: null });
  process.stdout.write('', () => process.exit(0));
}

async function handle(line) {
  if (line.trim() === '') return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    emit('result', { id: null, ok: false, error: { code: -1, message: `bad JSON: ${e.message}` } });
    return;
  }
  if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd)) {
    emit('result', { id: null, ok: false, error: { code: -1, message: 'a command must be a JSON object' } });
    return;
  }
  const id = cmd.id === undefined ? null : cmd.id;
  if (cmd.op === 'exit') {
    await shutdown(id);
    return;
  }
  const fn = Object.prototype.hasOwnProperty.call(ops, cmd.op) ? ops[cmd.op] : undefined;
  if (fn === undefined) {
    emit('result', { id, op: cmd.op, ok: false, error: { code: -1, message: `unknown op ${JSON.stringify(cmd.op)}` } });
    return;
  }
  try {
    let promise = fn(cmd);
    if (cmd.callTimeout !== undefined) promise = withTimeout(promise, cmd.callTimeout, cmd.op);
    const value = await promise;
    emit('result', { id, op: cmd.op, ok: true, value: value === undefined ? null : value });
  } catch (e) {
    emit('result', { id, op: cmd.op, ok: false, error: errorObject(e) });
  }
}

const pending = new Set();
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  if (exiting) return;
  const promise = handle(line)
    .catch((e) => emit('driver_error', { message: `handler failed: ${e && e.stack ? e.stack : e}` }))
    .finally(() => pending.delete(promise));
  pending.add(promise);
});
rl.on('close', () => {
  shutdown(undefined);
});

emit('ready', { url, protocol, trace: Boolean(trace) });
