// A private Aedes broker for the broker-matrix tests: `node server.mjs PORT`, loopback only,
// default (in-memory) persistence, stops cleanly on SIGTERM.
import net from 'node:net'
import { Aedes } from 'aedes'

const port = Number(process.argv[2])
const broker = await Aedes.createBroker()
const server = net.createServer(broker.handle)

server.listen(port, '127.0.0.1', () => console.log(`aedes ${port} ready`))

process.on('SIGTERM', () => {
  server.close()
  broker.close(() => process.exit(0))
})
