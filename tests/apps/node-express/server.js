const express = require("express");

const app = express();
const port = process.env.PORT || 3000;

app.get("/", (req, res) => {
  res.type("text/plain").send(`hello from node ${process.version} (${process.env.NODE_ENV})\n`);
});

app.get("/healthz", (req, res) => res.json({ ok: true }));

app.listen(port, "0.0.0.0", () => console.log(`listening on ${port}`));
