// The official openai npm package as a client of the sidecar, for tests/test_clients.py and
// bench/clients.py. Node's own defaults are what is measured: nothing here sets a field the
// caller did not ask for but `temperature: 0`, which every client of the matrix sends.
//
// Usage: node client.mjs BASE_URL API_KEY OP...  (OP: chat | stream | embed; PROMPT from the
// environment) prints one JSON line per OP: the answer's X-Cache, its request id, what it said.
// With OP `-` it serves requests instead: one JSON line per request on stdin
// ({"op": "chat", "prompt": "..."} or {"op": "embed", "input": [...]}), one answer line each.
import OpenAI from "openai";
import { createInterface } from "node:readline";

const [baseURL, apiKey, ...ops] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const model = "gpt-4o-mini";
const defaults = { prompt: process.env.PROMPT ?? "Say hello from Node.", input: ["node one", "node two"] };
const messagesOf = (prompt) => [{ role: "user", content: prompt }];

async function chat({ prompt }) {
  const { data, response } = await client.chat.completions
    .create({ model, messages: messagesOf(prompt), temperature: 0 })
    .withResponse();
  return { xCache: response.headers.get("x-cache"), requestId: data._request_id ?? null,
    content: data.choices[0].message.content };
}

async function stream({ prompt }) {
  const { data, response } = await client.chat.completions
    .create({ model, messages: messagesOf(prompt), temperature: 0, stream: true })
    .withResponse();
  let content = "";
  for await (const chunk of data) content += chunk.choices[0]?.delta?.content ?? "";
  return { xCache: response.headers.get("x-cache"), requestId: response.headers.get("x-request-id"),
    content };
}

async function embed({ input }) {
  const { data, response } = await client.embeddings
    .create({ model: "text-embedding-3-small", input })
    .withResponse();
  return { xCache: response.headers.get("x-cache"), requestId: data._request_id ?? null,
    content: data.data.map((item) => item.embedding.length) };
}

const run = { chat, stream, embed };
async function answer(op, params) {
  if (!(op in run)) throw new Error(`unknown op ${op}`);
  console.log(JSON.stringify({ op, ...(await run[op]({ ...defaults, ...params })) }));
}

if (ops.length === 1 && ops[0] === "-") {
  for await (const line of createInterface({ input: process.stdin })) {
    const { op, ...params } = JSON.parse(line);
    await answer(op, params);
  }
} else {
  for (const op of ops) await answer(op, {});
}
