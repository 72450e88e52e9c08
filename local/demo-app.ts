// The bundled demo app of local mode: a small to-do list on PostgreSQL with a
// health URL. Local mode runs it twice: the local copy on the local database
// and the cloud copy on the cloud database. It knows nothing of Lifeboat; the
// router decides which copy gets the traffic, and the databases decide which
// copy may write (a fenced side answers writes with 503 and the reason).
//
//   GET  /healthz            200 when the database answers
//   GET  /                   the list, as HTML
//   GET  /todos              the list, as JSON
//   POST /todos              {"title": "…"} or a form field title=…
//   POST /todos/:id/done     mark done
//   DELETE /todos/:id
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { z } from 'zod';

export interface DemoAppOptions {
  /** 'local' or 'cloud': shown in pages and the x-lifeboat-app header. */
  readonly name: string;
  readonly databaseUrl: string;
  readonly host?: string;
  /** 0: any free port. */
  readonly port?: number;
  /** Create the table when missing (the local copy; the cloud copy gets it by replication). */
  readonly createSchema?: boolean;
}

export interface DemoApp {
  readonly url: string;
  readonly port: number;
  readonly name: string;
  stop(): Promise<void>;
}

export const DEMO_TABLE_SQL = `CREATE TABLE IF NOT EXISTS public.todos (
  id bigserial PRIMARY KEY,
  title text NOT NULL,
  done boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
)`;

const newTodo = z.strictObject({ title: z.string().trim().min(1, 'title must not be empty').max(500, 'title is longer than 500 characters') });

const READ_ONLY = '25006';
const PERMISSION = '42501';

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

async function body(req: IncomingMessage, limit = 64 * 1024): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw Object.assign(new Error(`request body larger than ${limit} bytes`), { status: 413 });
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export async function startDemoApp(opts: DemoAppOptions): Promise<DemoApp> {
  const pool = new pg.Pool({ connectionString: opts.databaseUrl, max: 4, application_name: `lifeboat-demo-${opts.name}`, connectionTimeoutMillis: 2_000 });
  pool.on('error', () => {}); // a terminated idle session (fencing) is expected; the next query reconnects
  if (opts.createSchema) await pool.query(DEMO_TABLE_SQL);

  const send = (res: ServerResponse, status: number, value: unknown, type = 'application/json') => {
    res.writeHead(status, { 'content-type': type, 'x-lifeboat-app': opts.name, 'cache-control': 'no-store' });
    res.end(typeof value === 'string' ? value : JSON.stringify(value));
  };
  const fail = (res: ServerResponse, err: unknown) => {
    const code = (err as { code?: unknown }).code;
    const status = (err as { status?: unknown }).status;
    if (typeof status === 'number') return send(res, status, { error: (err as Error).message });
    if (code === READ_ONLY || code === PERMISSION) {
      return send(res, 503, { error: `the ${opts.name} copy is read-only right now (the other side holds the writer lease): ${(err as Error).message}` });
    }
    return send(res, 503, { error: `the ${opts.name} copy's database failed: ${(err as Error).message}` });
  };

  const server: Server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname;
    try {
      if (req.method === 'GET' && path === '/healthz') {
        await pool.query('SELECT 1');
        return send(res, 200, { ok: true, app: opts.name });
      }
      if (req.method === 'GET' && path === '/todos') {
        const r = await pool.query('SELECT id::text, title, done, created_at FROM public.todos ORDER BY id');
        return send(res, 200, r.rows);
      }
      if (req.method === 'GET' && path === '/') {
        const r = await pool.query<{ id: string; title: string; done: boolean }>('SELECT id::text, title, done FROM public.todos ORDER BY id DESC LIMIT 200');
        const items = r.rows.map((t) => `<li>${t.done ? '<s>' : ''}${escapeHtml(t.title)}${t.done ? '</s>' : ''}</li>`).join('\n');
        return send(
          res,
          200,
          `<!doctype html><meta charset="utf-8"><title>To-do (${opts.name})</title><h1>To-do — served by the ${opts.name} copy</h1>` +
            `<form method="post" action="/todos"><input name="title" required><button>Add</button></form><ul>${items}</ul>`,
          'text/html; charset=utf-8',
        );
      }
      if (req.method === 'POST' && path === '/todos') {
        const text = await body(req);
        const raw = (req.headers['content-type'] ?? '').includes('application/json') ? JSON.parse(text || '{}') : Object.fromEntries(new URLSearchParams(text));
        const parsed = newTodo.safeParse(raw);
        if (!parsed.success) return send(res, 400, { error: parsed.error.issues.map((i) => i.message).join('; ') });
        const r = await pool.query('INSERT INTO public.todos (title) VALUES ($1) RETURNING id::text, title, done', [parsed.data.title]);
        if ((req.headers.accept ?? '').includes('text/html')) {
          res.writeHead(303, { location: '/', 'x-lifeboat-app': opts.name });
          return res.end();
        }
        return send(res, 201, r.rows[0]);
      }
      const done = /^\/todos\/(\d{1,18})\/done$/.exec(path);
      if (req.method === 'POST' && done) {
        const r = await pool.query('UPDATE public.todos SET done = true WHERE id = $1 RETURNING id::text, title, done', [done[1]]);
        return r.rowCount ? send(res, 200, r.rows[0]) : send(res, 404, { error: `no to-do ${done[1]}` });
      }
      const one = /^\/todos\/(\d{1,18})$/.exec(path);
      if (req.method === 'DELETE' && one) {
        const r = await pool.query('DELETE FROM public.todos WHERE id = $1', [one[1]]);
        return r.rowCount ? send(res, 204, '') : send(res, 404, { error: `no to-do ${one[1]}` });
      }
      return send(res, 404, { error: `no route ${req.method} ${path}` });
    } catch (err) {
      if (err instanceof SyntaxError) return send(res, 400, { error: `the body is not JSON: ${err.message}` });
      return fail(res, err);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${opts.host ?? '127.0.0.1'}:${port}`,
    port,
    name: opts.name,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await pool.end().catch(() => undefined);
    },
  };
}
