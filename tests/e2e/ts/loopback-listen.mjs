// Preloaded (`node --import ./loopback-listen.mjs ...`) by the end-to-end
// tests in front of @modelcontextprotocol/server-everything, which listens on
// `PORT` on every interface. A server behind a server sidecar must be reachable
// on loopback only, so every listen() that names no host is bound to
// 127.0.0.1, and the bound port is printed as `READY <port>` on stdout for the
// test to read (PORT=0 picks a free one).
import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const [first, second] = args;
  const portOnly = (typeof first === 'number' || typeof first === 'string') &&
    (second === undefined || typeof second === 'function');
  if (portOnly) {
    args = [Number(first), '127.0.0.1', ...args.slice(1)];
    this.once('listening', () => {
      process.stdout.write(`READY ${this.address().port}\n`);
    });
  }
  return listen.apply(this, args);
};
