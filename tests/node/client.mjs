// The official openai npm package as a client of the sidecar, for tests/test_clients.py.
// Usage: node client.mjs BASE_URL API_KEY OP...  (OP: chat | stream | embed)
// Prints one JSON line per OP: the answer's X-Cache, its request id and what it said.
import OpenAI from "openai";

const [baseURL, apiKey, ...ops] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const model = "gpt-4o-mini";
const messages = [{ role: "user", content: process.env.PROMPT ?? "Say hello from Node." }];

async function chat() {
  const { data, response } = await client.chat.completions
    .create({ model, messages, temperature: 0 })
    .withResponse();
  return { xCache: response.headers.get("x-cache"), requestId: data._request_id ?? null,
    content: data.choices[0].message.content };
}

async function stream() {
  const { data, response } = await client.chat.completions
    .create({ model, messages, temperature: 0, stream: true })
    .withResponse();
  let content = "";
  for await (const chunk of data) content += chunk.choices[0]?.delta?.content ?? "";
  return { xCache: response.headers.get("x-cache"), requestId: response.headers.get("x-request-id"),
    content };
}

async function embed() {
  const { data, response } = await client.embeddings
    .create({ model: "text-embedding-3-small", input: ["node one", "node two"] })
    .withResponse();
  return { xCache: response.headers.get("x-cache"), requestId: data._request_id ?? null,
    content: data.data.map((item) => item.embedding.length) };
}

const run = { chat, stream, embed };
for (const op of ops) {
  if (!(op in run)) throw new Error(`unknown op ${op}`);
  console.log(JSON.stringify({ op, ...(await run[op]()) }));
}
