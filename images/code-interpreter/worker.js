// A JavaScript context of Vulcan's code interpreter: cells run in one vm context, so
// variables (let and const included) persist between them. Cells arrive as JSON lines on
// stdin; events leave as JSON lines on the fd named by VULCAN_EVENTS_FD. SIGINT
// interrupts the running cell (breakOnSigint), not the worker.
'use strict'
const fs = require('fs')
const vm = require('vm')
const util = require('util')
const readline = require('readline')

const fd = Number(process.env.VULCAN_EVENTS_FD)
const send = (ev) => fs.writeSync(fd, JSON.stringify(ev) + '\n')
for (const name of ['stdout', 'stderr']) {
  process[name].write = (chunk, enc, cb) => {
    send({ type: name, text: typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8') })
    if (typeof enc === 'function') enc()
    else if (typeof cb === 'function') cb()
    return true
  }
}
process.on('SIGINT', () => {}) // between cells: nothing to interrupt

const sandbox = { console, require, process, Buffer, setTimeout, clearTimeout, setInterval, clearInterval, URL, TextEncoder, TextDecoder }
sandbox.global = sandbox
const context = vm.createContext(sandbox)

async function run (code, env) {
  const t0 = process.hrtime.bigint()
  const saved = {}
  for (const [k, v] of Object.entries(env)) { saved[k] = process.env[k]; process.env[k] = v }
  try {
    let value = vm.runInContext(code, context, { filename: 'cell.js', breakOnSigint: true })
    if (value && typeof value.then === 'function') value = await value
    if (value !== undefined) {
      const r = { type: 'result', is_main_result: true, text: typeof value === 'string' ? value : util.inspect(value) }
      if (value !== null && typeof value === 'object') {
        try { r.json = JSON.parse(JSON.stringify(value)) } catch {}
      }
      send(r)
    }
  } catch (e) {
    send({ type: 'error', name: (e && e.name) || 'Error', value: (e && e.message) || String(e), traceback: (e && e.stack) || String(e) })
  } finally {
    for (const [k, v] of Object.entries(saved)) { if (v === undefined) delete process.env[k]; else process.env[k] = v }
    send({ type: 'done', duration_us: Number((process.hrtime.bigint() - t0) / 1000n) })
  }
}

const rl = readline.createInterface({ input: process.stdin })
const lines = rl[Symbol.asyncIterator]()
;(async () => {
  for (;;) {
    const { value, done } = await lines.next()
    if (done) return
    let req
    try { req = JSON.parse(value) } catch { continue }
    await run(req.code || '', req.env || {})
  }
})()
