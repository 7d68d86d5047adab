// The official E2B SDK (e2b, pinned in package.json) against a live Vulcan server, run by
// TestOfficialSDK. Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY, TEMPLATE.
// Each check prints "ok NAME" or "FAIL NAME: why"; the exit code is the failure count.
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
// E2B_MODULE picks the SDK: "e2b" (2.51, POST /v2/sandboxes) or "e2b-2.50" (POST /sandboxes).
const {
  Sandbox, CommandExitError, TimeoutError, NotFoundError, SandboxError, FileNotFoundError,
} = await import(process.env.E2B_MODULE || 'e2b')

const template = process.env.TEMPLATE || 'python'
let failures = 0
async function check(name, fn) {
  try {
    await fn()
    console.log(`ok ${name}`)
  } catch (e) {
    failures++
    console.log(`FAIL ${name}: ${e?.name}: ${e?.message}`.replace(/\n/g, ' | '))
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const sha = (b) => createHash('sha256').update(b).digest('hex')

const tag = randomBytes(4).toString('hex')
// Scratch under /tmp is per run: the Go test's sandboxes share the host's /tmp.
const T = `/tmp/e2b-${tag}`
const sbx = await Sandbox.create(template, { timeoutMs: 120_000, metadata: { suite: tag, who: 'a b&c' }, envs: { SBX_ENV: 'from-create' } })
const other = await Sandbox.create(template, { metadata: { suite: tag } })

await check('ids are lower-case alphanumeric', async () => {
  assert.match(sbx.sandboxId, /^[0-9a-z]+$/)
})

await check('getInfo', async () => {
  const info = await sbx.getInfo()
  assert.equal(info.sandboxId, sbx.sandboxId)
  assert.equal(info.templateId, template)
  assert.equal(info.state, 'running')
  assert.deepEqual(info.metadata, { suite: tag, who: 'a b&c' })
  assert.ok(info.endAt > info.startedAt)
})

await check('list filters by metadata and pages', async () => {
  const seen = new Set()
  const pager = Sandbox.list({ query: { metadata: { suite: tag } }, limit: 1 })
  let pages = 0
  while (pager.hasNext) {
    const items = await pager.nextItems()
    pages++
    for (const s of items) seen.add(s.sandboxId)
    if (pages > 10) break
  }
  assert.deepEqual([...seen].sort(), [sbx.sandboxId, other.sandboxId].sort())
  assert.ok(pages >= 2, `pages ${pages}`)
  const none = await Sandbox.list({ query: { metadata: { suite: 'nope' + tag } } }).nextItems()
  assert.equal(none.length, 0)
  const odd = await Sandbox.list({ query: { metadata: { who: 'a b&c', suite: tag } } }).nextItems()
  assert.deepEqual(odd.map((s) => s.sandboxId), [sbx.sandboxId])
})

await check('setTimeout moves endAt', async () => {
  await sbx.setTimeout(600_000)
  const info = await sbx.getInfo()
  const left = info.endAt.getTime() - Date.now()
  assert.ok(left > 500_000 && left <= 601_000, `left ${left}`)
})

await check('getMetrics', async () => {
  const m = await sbx.getMetrics()
  assert.ok(m.length >= 1)
  assert.ok(m[0].cpuCount >= 1 && m[0].memTotal > 0 && m[0].diskTotal >= 0, JSON.stringify(m[0]))
})

await check('commands.run: stdout, env, cwd, user', async () => {
  const chunks = []
  const r = await sbx.commands.run('echo hi; echo $SBX_ENV $X; pwd; id -u', { envs: { X: 'x1' }, onStdout: (d) => chunks.push(d) })
  assert.equal(r.exitCode, 0)
  assert.match(r.stdout, /^hi\nfrom-create x1\n\/home\/user\n1000\n$|^hi\nfrom-create x1\n.+\n\d+\n$/)
  assert.equal(chunks.join(''), r.stdout)
  const root = await sbx.commands.run('id -u; pwd', { user: 'root', cwd: '/tmp' })
  assert.match(root.stdout, /\n\/tmp\n$/)
})

await check('commands.run: non-zero exit is CommandExitError', async () => {
  await assert.rejects(sbx.commands.run('echo oops >&2; exit 3'), (e) => {
    assert.ok(e instanceof CommandExitError, e?.name)
    assert.equal(e.exitCode, 3)
    assert.equal(e.stderr, 'oops\n')
    return true
  })
})

await check('commands.run: many lines, nothing lost', async () => {
  const r = await sbx.commands.run('seq 1 20000')
  const lines = r.stdout.trimEnd().split('\n')
  assert.equal(lines.length, 20000)
  assert.equal(lines[19999], '20000')
})

await check('background, list, kill', async () => {
  const h = await sbx.commands.run('sleep 60', { background: true })
  assert.ok(h.pid > 0)
  const list = await sbx.commands.list()
  assert.ok(list.some((p) => p.pid === h.pid), JSON.stringify(list))
  assert.equal(await h.kill(), true)
  await assert.rejects(h.wait(), (e) => e instanceof CommandExitError && e.exitCode !== 0)
  assert.equal(await sbx.commands.kill(h.pid), false)
})

await check('stdin: send and close', async () => {
  const h = await sbx.commands.run('cat; echo done', { background: true, stdin: true })
  await sbx.commands.sendStdin(h.pid, 'abc\n')
  await sbx.commands.sendStdin(h.pid, 'def')
  await sbx.commands.closeStdin(h.pid)
  const r = await h.wait()
  assert.equal(r.stdout, 'abc\ndefdone\n')
})

await check('connect to a running command by pid', async () => {
  const h = await sbx.commands.run('sleep 0.5; echo one; sleep 0.5; echo two', { background: true })
  await h.disconnect()
  const again = await sbx.commands.connect(h.pid)
  const r = await again.wait()
  assert.match(r.stdout, /two\n$/)
})

await check('command timeout kills it', async () => {
  const t0 = Date.now()
  await assert.rejects(sbx.commands.run('sleep 30; echo late', { timeoutMs: 1000 }), (e) => e instanceof TimeoutError)
  assert.ok(Date.now() - t0 < 10_000)
  await sleep(500)
  const list = await sbx.commands.list()
  assert.ok(!list.some((p) => p.config?.args?.includes('sleep 30; echo late')), JSON.stringify(list))
})

await check('files: write/read text, bytes, stream; exists; getInfo', async () => {
  const info = await sbx.files.write('notes/a.txt', 'hello\n')
  assert.equal(info.name, 'a.txt')
  assert.match(info.path, /notes\/a\.txt$/)
  assert.equal(await sbx.files.read('notes/a.txt'), 'hello\n')
  const big = randomBytes(5 * 1024 * 1024 + 7)
  await sbx.files.write(`${T}/big.bin`, big)
  const back = await sbx.files.read(`${T}/big.bin`, { format: 'bytes' })
  assert.equal(sha(back), sha(big))
  const stream = await sbx.files.read(`${T}/big.bin`, { format: 'stream' })
  const parts = []
  for await (const c of stream) parts.push(c)
  assert.equal(sha(Buffer.concat(parts)), sha(big))
  const rs = new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('streamed')); c.close() } })
  await sbx.files.write(`${T}/s.txt`, rs)
  assert.equal(await sbx.files.read(`${T}/s.txt`), 'streamed')
  assert.equal(await sbx.files.exists('notes/a.txt'), true)
  assert.equal(await sbx.files.exists('notes/none.txt'), false)
  const st = await sbx.files.getInfo('notes/a.txt')
  assert.equal(st.type, 'file')
  assert.equal(st.size, 6)
})

await check('files: multi-file write', async () => {
  const infos = await sbx.files.write([{ path: `${T}/m/1.txt`, data: 'one' }, { path: `${T}/m/2.txt`, data: 'two' }])
  assert.deepEqual(infos.map((i) => i.path), [`${T}/m/1.txt`, `${T}/m/2.txt`])
  assert.equal(await sbx.files.read(`${T}/m/2.txt`), 'two')
})

await check('files: makeDir, list, rename, remove, missing', async () => {
  assert.equal(await sbx.files.makeDir(`${T}/d/e`), true)
  assert.equal(await sbx.files.makeDir(`${T}/d/e`), false)
  await sbx.files.write(`${T}/d/e/f.txt`, 'f')
  const list = await sbx.files.list(`${T}/d`)
  assert.deepEqual(list.map((e) => [e.name, e.type]), [['e', 'dir']])
  const deep = await sbx.files.list(`${T}/d`, { depth: 2 })
  assert.ok(deep.some((e) => e.name === 'f.txt' && e.type === 'file'))
  const moved = await sbx.files.rename(`${T}/d/e/f.txt`, `${T}/d/g.txt`)
  assert.equal(moved.path, `${T}/d/g.txt`)
  await sbx.files.remove(`${T}/d`)
  assert.equal(await sbx.files.exists(`${T}/d`), false)
  await assert.rejects(sbx.files.read(`${T}/d/g.txt`), (e) => e instanceof FileNotFoundError || e instanceof NotFoundError)
  await assert.rejects(sbx.files.list('/nonexistent-dir'), (e) => e instanceof NotFoundError || e instanceof FileNotFoundError)
})

await check('watchDir (recursive)', async () => {
  await sbx.files.makeDir(`${T}/w`)
  const events = []
  const h = await sbx.files.watchDir(`${T}/w`, (ev) => events.push(ev), { recursive: true })
  await sbx.files.write(`${T}/w/sub/x.txt`, 'x')
  const until = Date.now() + 10_000
  while (!events.some((e) => e.name === 'sub/x.txt' && e.type === 'create') && Date.now() < until) await sleep(50)
  await h.stop()
  assert.ok(events.some((e) => e.name === 'sub/x.txt' && e.type === 'create'), JSON.stringify(events))
  assert.ok(events.every((e) => !e.name.includes('.vulcan-write')), JSON.stringify(events))
})

await check('pty: create, input, resize, kill', async () => {
  let out = ''
  const dec = new TextDecoder()
  const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += dec.decode(d) }, timeoutMs: 0 })
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; echo pty-$((40+2))\n'))
  let until = Date.now() + 15_000
  while (!out.includes('pty-42') && Date.now() < until) await sleep(50)
  assert.ok(out.includes('24 80'), out)
  assert.ok(out.includes('pty-42'), out)
  await sbx.pty.resize(pty.pid, { cols: 100, rows: 30 })
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size\n'))
  until = Date.now() + 15_000
  while (!out.includes('30 100') && Date.now() < until) await sleep(50)
  assert.ok(out.includes('30 100'), out)
  assert.equal(await sbx.pty.kill(pty.pid), true)
  await assert.rejects(pty.wait(), (e) => e instanceof CommandExitError)
})

await check('Sandbox.connect from another client', async () => {
  const again = await Sandbox.connect(sbx.sandboxId)
  const r = await again.commands.run('cat notes/a.txt')
  assert.equal(r.stdout, 'hello\n')
})

if (process.env.VULCAN_CAN_PAUSE === '1') {
  // Real VMs: pause keeps a file and a running process; connect resumes it.
  await check('pause, list paused, connect resumes with files and processes', async () => {
    const p = await Sandbox.create(template, { allowInternetAccess: false })
    try {
      await p.files.write('paused/keep.txt', 'kept across the pause')
      const bg = await p.commands.run('sleep 600', { background: true })
      assert.equal(await p.pause(), true)
      assert.equal(await Sandbox.pause(p.sandboxId), false) // already paused
      assert.equal((await Sandbox.getInfo(p.sandboxId)).state, 'paused')
      const paused = await Sandbox.list({ query: { state: ['paused'] } }).nextItems()
      assert.ok(paused.some((s) => s.sandboxId === p.sandboxId), 'listed as paused')
      const back = await Sandbox.connect(p.sandboxId)
      assert.equal((await Sandbox.getInfo(p.sandboxId)).state, 'running')
      assert.equal(await back.files.read('paused/keep.txt'), 'kept across the pause')
      const procs = await back.commands.list()
      assert.ok(procs.some((x) => x.pid === bg.pid), `process ${bg.pid} survived: ${JSON.stringify(procs.map((x) => x.pid))}`)
      await back.commands.kill(bg.pid)
    } finally {
      await Sandbox.kill(p.sandboxId)
    }
  })
  await check('a sandbox with internet access is not paused, and keeps running', async () => {
    const n = await Sandbox.create(template, { allowInternetAccess: true })
    try {
      await assert.rejects(n.pause(), (e) => /network/.test(e.message))
      assert.equal((await n.commands.run('echo still')).stdout, 'still\n')
    } finally {
      await Sandbox.kill(n.sandboxId)
    }
  })
} else {
  await check('pause answers a clear error', async () => {
    await assert.rejects(sbx.pause(), (e) => e instanceof SandboxError && /not supported/.test(e.message))
  })
}

if (process.env.USER_TEMPLATE) {
  // A template built on this server (vulcan template build): its files and ENV.
  await check('a user template by its templateID', async () => {
    const u = await Sandbox.create(process.env.USER_TEMPLATE)
    try {
      assert.equal((await u.getInfo()).templateId, process.env.USER_TEMPLATE)
      const r = await u.commands.run('cat /etc/template-marker; echo $TPL_ENV')
      assert.equal(r.stdout, 'made-by-a-dockerfile\nfrom-the-template\n')
    } finally {
      await Sandbox.kill(u.sandboxId)
    }
  })
}

await check('unknown template', async () => {
  await assert.rejects(Sandbox.create('cobol-' + tag), (e) => /not found/.test(e.message))
})

await check('kill; then it is gone', async () => {
  assert.equal(await sbx.kill(), true)
  assert.equal(await Sandbox.kill(sbx.sandboxId), false)
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId), (e) => e instanceof NotFoundError || /not found/i.test(e.message))
  await assert.rejects(sbx.commands.run('true'), (e) => e instanceof Error)
  await other.commands.run(`rm -rf ${T}`)
  await other.kill()
})

console.log(`done failures=${failures}`)
process.exit(failures)
