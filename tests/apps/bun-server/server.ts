const port = Number(process.env.PORT ?? 3000);

Bun.serve({
  port,
  hostname: "0.0.0.0",
  fetch() {
    return new Response(`hello from bun ${Bun.version}\n`);
  },
});

console.log(`listening on ${port}`);
