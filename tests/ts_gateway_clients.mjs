// The TypeScript MCP SDK's Streamable HTTP client, as its users run it: COUNT clients one
// after another, each connecting, listing the tools and closing, which sends no DELETE
// (the SDK's default: its session is left for the server to reclaim). Prints one JSON
// line: the tools each listed, or the error that stopped it.
// usage: node ts_gateway_clients.mjs SDK_DIR URL TOKEN COUNT
import { pathToFileURL } from "node:url";

const [sdk, url, token, count] = process.argv.slice(2);
const { Client } = await import(pathToFileURL(`${sdk}/dist/esm/client/index.js`));
const { StreamableHTTPClientTransport } = await import(
  pathToFileURL(`${sdk}/dist/esm/client/streamableHttp.js`));

const results = [];
for (let i = 0; i < Number(count); i++) {
  const client = new Client({ name: "ts-flood", version: "1" });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  let step = "connect";
  try {
    await client.connect(transport);
    step = "listTools";
    const { tools } = await client.listTools();
    results.push({ session: transport.sessionId, tools: tools.length });
  } catch (err) {
    // (undici's "fetch failed" says why only in its cause: a reset, a refusal, a timeout)
    const cause = err.cause ? ` (${err.cause.code ?? ""} ${err.cause})` : "";
    results.push({ error: `${step}: ${err}${cause}` });
  } finally {
    await client.close();
  }
}
console.log(JSON.stringify(results));
