// Two MCP servers from npm and an API, as PM2's docs lay an ecosystem file out.
const port = Number(process.env.API_PORT || 3000);

module.exports = {
  apps: [
    {
      name: "api",
      script: "./dist/server.js",
      instances: 2,
      exec_mode: "cluster",
      max_memory_restart: "300M",
      kill_timeout: 5000,
      env: { NODE_ENV: "development", PORT: port },
      env_production: { NODE_ENV: "production" },
      out_file: "/var/log/api/out.log",
      error_file: "/var/log/api/err.log",
    },
    {
      name: "mcp-filesystem",
      script: "npx",
      args: ["-y", "@modelcontextprotocol/server-filesystem", "/srv/data"],
      autorestart: true,
      min_uptime: "5s",
      max_restarts: 10,
      restart_delay: 2000,
    },
    {
      name: "mcp-fetch",
      script: "uvx",
      args: "mcp-server-fetch --ignore-robots-txt",
      interpreter: "none",
      stop_exit_codes: [0],
      cron_restart: "0 */6 * * *",
      watch: ["config"],
    },
  ],
};
