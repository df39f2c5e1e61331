// A trivial backend for bench/hooks.sh: answers wsgate's on_connect with accept and every
// forwarded message with the same bytes back to its sender, over HTTP/1.1 keep-alive.
//   node bench/hook_backend.mjs PORT
import { createServer } from 'node:http';

const port = Number(process.argv[2]);
// TCP connections and requests so far (GET /stats): whether wsgate's hook client reuses its
// connections shows as requests per connection.
let connections = 0;
let requests = 0;
const server = createServer((req, res) => {
  requests++;
  if (req.url === '/stats') {
    res.end(JSON.stringify({ connections, requests }));
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let out = '{}';
    if (req.url === '/connect') {
      out = '{"accept":true}';
    } else if (req.url === '/message') {
      const m = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      out = m.b64data !== undefined
        ? JSON.stringify({ messages: [{ b64data: m.b64data }] })
        : JSON.stringify({ messages: [m.data] });
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(out) });
    res.end(out);
  });
});
server.on('connection', () => { connections++; });
server.keepAliveTimeout = 60_000;
server.listen(port, '127.0.0.1', () => console.error(`hook backend on 127.0.0.1:${port}`));
