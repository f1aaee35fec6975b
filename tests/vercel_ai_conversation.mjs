// A two-turn conversation with a tool call in each turn, through the Vercel AI SDK, as an
// application writes it: `node vercel_ai_conversation.mjs <client> <base URL> <model>`.
// <client> is `responses` (openai.responses, the whole history each turn), `responses-previous`
// (openai.responses continuing with previousResponseId, only what is new each turn), `chat`
// (openai.chat) or `anthropic` (@ai-sdk/anthropic). The first turn is generateText, the
// second streamText. Prints one JSON line: each turn's text, the tool calls the SDK ran, and
// the response ids. Run from a directory whose node_modules holds ai, @ai-sdk/openai,
// @ai-sdk/anthropic and zod.
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, isStepCount, streamText, tool } from "ai";
import { z } from "zod";

const [client, baseURL, modelId] = process.argv.slice(2);
const apiKey = "sk-vercel-client";
const openai = createOpenAI({ baseURL, apiKey });
const model =
  client === "anthropic"
    ? createAnthropic({ baseURL, apiKey })(modelId)
    : client === "chat"
      ? openai.chat(modelId)
      : openai.responses(modelId);

const ran = [];
const tools = {
  weather: tool({
    description: "The weather in a city",
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => {
      ran.push(city);
      return `sunny in ${city}`;
    },
  }),
};

const messages = [{ role: "user", content: "What is the weather in Paris?" }];
const settings = { model, tools, stopWhen: isStepCount(3), maxOutputTokens: 1000 };
const first = await generateText({ ...settings, messages });
messages.push(...first.responseMessages);
const next = { role: "user", content: "And in Rome?" };
messages.push(next);

const previous = client === "responses-previous";
const responseId = first.providerMetadata?.openai?.responseId;
const second = streamText({
  ...settings,
  messages: previous ? [next] : messages,
  ...(previous ? { providerOptions: { openai: { previousResponseId: responseId } } } : {}),
});
const secondText = await second.text;
const secondMetadata = await second.providerMetadata;

console.log(
  JSON.stringify({
    texts: [first.text, secondText],
    ran,
    steps: [first.steps.length, (await second.steps).length],
    responseIds: [responseId ?? null, secondMetadata?.openai?.responseId ?? null],
  }),
);
