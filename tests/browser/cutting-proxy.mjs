// A TCP proxy the tests control: it forwards a browser's traffic to the app
// and cuts every WebSocket after it has carried two acknowledgements, as a
// flaky phone connection would. `setDown(true)` takes the uploads' network
// away altogether (open sockets cut, new sockets and photo POSTs refused)
// while pages still load, as a phone in a dead spot that reloads a tab.
import net from "node:net";

/** Counts complete server-to-client WebSocket text frames in `buf`. */
function textFrames(state, buf) {
  state.pending = Buffer.concat([state.pending, buf]);
  let n = 0;
  for (;;) {
    const b = state.pending;
    if (b.length < 2) break;
    let len = b[1] & 0x7f;
    let off = 2;
    if (len === 126) {
      if (b.length < 4) break;
      len = b.readUInt16BE(2);
      off = 4;
    } else if (len === 127) {
      if (b.length < 10) break;
      len = Number(b.readBigUInt64BE(2));
      off = 10;
    }
    if (b.length < off + len) break;
    if ((b[0] & 0x0f) === 1) n += 1;
    state.pending = b.subarray(off + len);
  }
  return n;
}

export function cuttingProxy(listenPort, targetPort, acksPerConnection = 2) {
  const stats = { cuts: 0, sockets: 0, refused: 0 };
  const open = new Set();
  const liveSockets = new Set();
  let down = false;
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    open.add(client);
    open.add(upstream);
    let isSocket = false;
    let upgraded = false;
    const state = { pending: Buffer.alloc(0) };
    let acks = 0;
    client.on("data", (d) => {
      const head = d.toString("latin1", 0, 40);
      if (down && (head.startsWith("GET /ws/audio") || head.startsWith("POST /api/photo"))) {
        stats.refused += 1;
        client.destroy();
        upstream.destroy();
        return;
      }
      if (!isSocket && head.startsWith("GET /ws/audio")) {
        isSocket = true;
        stats.sockets += 1;
        liveSockets.add(client);
      }
      upstream.write(d);
    });
    upstream.on("data", (d) => {
      client.write(d);
      if (!isSocket) return;
      if (!upgraded) {
        // Skip the 101 response headers.
        const end = d.indexOf("\r\n\r\n");
        if (end < 0) return;
        upgraded = true;
        d = d.subarray(end + 4);
      }
      acks += textFrames(state, d);
      if (acks >= acksPerConnection) {
        stats.cuts += 1;
        client.destroy();
        upstream.destroy();
      }
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
      liveSockets.delete(client);
    };
    client.on("error", close);
    upstream.on("error", close);
    client.on("close", close);
    upstream.on("close", close);
  });
  return new Promise((resolve) => {
    server.listen(listenPort, "127.0.0.1", () =>
      resolve({
        stats,
        setDown: (value) => {
          down = value;
          if (down) for (const s of liveSockets) s.destroy();
        },
        close: () => {
          for (const s of open) s.destroy();
          return new Promise((r) => server.close(r));
        },
      }));
  });
}
