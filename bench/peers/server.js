// Peer servers for wsgate's benchmarks, built on the node `ws` package (pinned in package.json).
//
//   node server.js echo   [port]   echo every message back to its sender
//   node server.js room   [port]   broadcast every client message to every client, sender included
//   node server.js fanout [port]   POST /publish broadcasts the body to every client
//
// Port 0 (the default) picks a free one. Listens on 127.0.0.1 and prints "PORT <n>" on stdout
// once listening. Every mode pings each client every PING_MS (default 25000, as wsgate; 0 turns
// it off) and drops a client that did not answer the previous ping, as the ws README's heartbeat
// example does. DEFLATE=1 turns on ws's perMessageDeflate (its per-socket zlib contexts, with
// context takeover) with a threshold of DEFLATE_MIN bytes (default 256, as wsgate's
// compression_min_bytes), for the permessage-deflate figures (bench/deflate.sh).
'use strict';

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const mode = process.argv[2];
const port = Number(process.argv[3] || 0);
const pingMs = Number(process.env.PING_MS ?? 25000);
if (!['echo', 'room', 'fanout'].includes(mode)) {
  console.error('usage: node server.js echo|room|fanout [port]');
  process.exit(2);
}

const server = http.createServer((req, res) => {
  if (mode === 'fanout' && req.method === 'POST' && req.url === '/publish') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      let n = 0;
      for (const c of wss.clients) {
        if (c.readyState === WebSocket.OPEN) {
          c.send(body, { binary: true });
          n++;
        }
      }
      const answer = JSON.stringify({ recipients: n });
      res.writeHead(200, {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(answer),
      });
      res.end(answer);
    });
    return;
  }
  res.writeHead(404, { 'Content-Length': 0 });
  res.end();
});
server.keepAliveTimeout = 60000;

const perMessageDeflate = process.env.DEFLATE === '1'
  ? { threshold: Number(process.env.DEFLATE_MIN ?? 256) }
  : false;
const wss = new WebSocketServer({ server, perMessageDeflate });
wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('error', () => {});
  if (mode === 'echo') {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  } else if (mode === 'room') {
    ws.on('message', (data, isBinary) => {
      for (const c of wss.clients) {
        if (c.readyState === WebSocket.OPEN) c.send(data, { binary: isBinary });
      }
    });
  }
});

if (pingMs > 0) {
  const timer = setInterval(() => {
    for (const ws of wss.clients) {
      if (!ws.isAlive) { ws.terminate(); continue; }
      ws.isAlive = false;
      ws.ping();
    }
  }, pingMs);
  wss.on('close', () => clearInterval(timer));
}

server.listen(port, '127.0.0.1', () => {
  console.log(`PORT ${server.address().port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
