// The official @e2b/code-interpreter SDK (pinned in package.json) against a live Vulcan
// server on real VMs, run by acceptance/TestCodeInterpreterSDK. Environment: E2B_API_URL,
// E2B_SANDBOX_URL, E2B_API_KEY. Each check prints "ok NAME" or "FAIL NAME: why"; the exit
// code is the failure count. Timings go to "time NAME MS" lines.
import assert from 'node:assert/strict'
import { Sandbox } from '@e2b/code-interpreter'
import { TimeoutError } from 'e2b'

let failures = 0
async function check (name, fn) {
  try {
    await fn()
    console.log(`ok ${name}`)
  } catch (e) {
    failures++
    console.log(`FAIL ${name}: ${e?.name}: ${e?.message}`.replace(/\n/g, ' | '))
  }
}

const t0 = Date.now()
const sbx = await Sandbox.create({ timeoutMs: 600_000 }) // the SDK's default template, code-interpreter-v1
const first = await sbx.runCode('1+1')
console.log(`time create-to-first-result ${Date.now() - t0}`)

try {
  await check('state persists: x = 1, then x + 1', async () => {
    assert.equal(first.text, '2')
    await sbx.runCode('x = 1')
    const r = await sbx.runCode('x + 1')
    assert.equal(r.text, '2')
    assert.equal(r.error, undefined)
  })

  await check('stdout and stderr, live and in logs', async () => {
    const seen = []
    const r = await sbx.runCode('import sys\nprint("hello")\nprint("oops", file=sys.stderr)', { onStdout: (m) => seen.push(m.line) })
    assert.deepEqual(r.logs.stdout, ['hello\n'])
    assert.deepEqual(r.logs.stderr, ['oops\n'])
    assert.deepEqual(seen, ['hello\n'])
  })

  await check('a matplotlib plot is a PNG result (and a chart)', async () => {
    const r = await sbx.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [4, 1, 9], label="l")\nplt.title("t")\nplt.show()')
    assert.equal(r.error, undefined, JSON.stringify(r.error))
    const png = r.results.find((x) => x.png)
    assert.ok(png, `no png among ${JSON.stringify(r.results.map((x) => x.formats()))}`)
    const b = Buffer.from(png.png, 'base64')
    assert.deepEqual([...b.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
    const w = b.readUInt32BE(16); const h = b.readUInt32BE(20)
    assert.ok(w > 100 && h > 100, `${w}x${h}`)
    assert.equal(png.chart?.type, 'line')
    assert.deepEqual(png.chart.elements[0].points, [[1, 4], [2, 1], [3, 9]])
  })

  await check('a pandas DataFrame is html and text', async () => {
    const r = await sbx.runCode('import pandas as pd\npd.DataFrame({"a": [1, 2], "b": ["x", "y"]})')
    assert.match(r.results[0].html, /<table/)
    assert.match(r.text, /a\s+b/)
  })

  await check('an exception has its name, value and traceback', async () => {
    const r = await sbx.runCode('def f():\n    return 1 / 0\nf()')
    assert.equal(r.error.name, 'ZeroDivisionError')
    assert.equal(r.error.value, 'division by zero')
    assert.match(r.error.traceback, /line 2, in f/)
  })

  await check('a timeout interrupts the cell; the kernel and x survive', async () => {
    const start = Date.now()
    await assert.rejects(sbx.runCode('while True:\n    pass', { timeoutMs: 2000 }), (e) => e instanceof TimeoutError)
    assert.ok(Date.now() - start < 10_000)
    const r = await sbx.runCode('x')
    assert.equal(r.text, '1')
  })

  await check('two contexts do not share variables', async () => {
    const a = await sbx.createCodeContext()
    const b = await sbx.createCodeContext({ cwd: '/tmp' })
    await sbx.runCode('secret = 5', { context: a })
    const rb = await sbx.runCode('secret', { context: b })
    assert.equal(rb.error?.name, 'NameError')
    assert.equal((await sbx.runCode('secret', { context: a })).text, '5')
    assert.equal((await sbx.runCode('import os; os.getcwd()', { context: b })).text, "'/tmp'")
    const ids = (await sbx.listCodeContexts()).map((c) => c.id)
    assert.ok(ids.includes(a.id) && ids.includes(b.id), JSON.stringify(ids))
    await sbx.restartCodeContext(a)
    assert.equal((await sbx.runCode('secret', { context: a })).error?.name, 'NameError')
    await sbx.removeCodeContext(b)
    assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === b.id))
  })

  await check('a JavaScript context keeps a variable', async () => {
    const js = await sbx.createCodeContext({ language: 'js' })
    await sbx.runCode('let k = 41; console.log("from js")', { context: js })
    const r = await sbx.runCode('k + 1', { context: js })
    assert.equal(r.text, '42')
    const byLang = await sbx.runCode('[1, 2].map((v) => v * 2)', { language: 'js' })
    assert.match(byLang.text, /2, 4/)
  })

  await check('env vars for one run', async () => {
    const r = await sbx.runCode('import os; os.environ.get("ONLY_HERE")', { envs: { ONLY_HERE: 'yes' } })
    assert.equal(r.text, "'yes'")
    assert.equal((await sbx.runCode('import os; os.environ.get("ONLY_HERE")')).text, undefined)
  })

  // C1: runCode('1+1') in a warm context, through the SDK.
  const ms = []
  for (let i = 0; i < 30; i++) {
    const s = performance.now()
    await sbx.runCode('1+1')
    ms.push(performance.now() - s)
  }
  ms.sort((a, b) => a - b)
  console.log(`time runcode-p50 ${ms[15].toFixed(2)}`)
} finally {
  await sbx.kill()
}
console.log(`done failures=${failures}`)
process.exit(failures)
