// Drives moeshard's HTTP API with the official openai client: a greedy
// completion, a streamed chat completion (the conversation test_http.sh sends
// with curl) and a refused request. Prints one JSON object for the test to check.
// usage: node client.mjs BASE_URL MODEL PROMPT MAX_TOKENS
import OpenAI from 'openai';

const [baseURL, model, prompt, maxTokens] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: process.env.MOESHARD_API_KEY || 'unused', maxRetries: 0, timeout: 60000 });

const completion = await client.completions.create({ model, prompt, max_tokens: Number(maxTokens), temperature: 0 });

const stream = await client.chat.completions.create({
  model,
  messages: [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Hello there' },
  ],
  max_tokens: 16,
  temperature: 0,
  stream: true,
});
let chat = '', role = null, chatFinish = null, chunks = 0;
for await (const chunk of stream) {
  chunks++;
  const choice = chunk.choices[0];
  if (!choice) continue;
  if (choice.delta?.role) role = choice.delta.role;
  chat += choice.delta?.content ?? '';
  if (choice.finish_reason) chatFinish = choice.finish_reason;
}

// Out of range: the client must surface a 400 with an OpenAI-style error.
let bad = null;
try {
  await client.completions.create({ model, prompt, temperature: 5 });
} catch (e) {
  bad = { status: e.status ?? null, type: e.error?.type ?? e.type ?? null, param: e.error?.param ?? e.param ?? null };
}

process.stdout.write(JSON.stringify({
  completion: completion.choices[0].text,
  finish: completion.choices[0].finish_reason,
  object: completion.object,
  usage: completion.usage,
  chat, role, chatFinish, chunks, bad,
}));
