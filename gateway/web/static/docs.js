// The API's operations, rendered from /docs/openapi.json here (no CDN: Redoc and Swagger UI
// would load their scripts from one). Everything from the document is inserted as text.
"use strict";

function el(tag, cls, ...children) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function schemaText(schema) {
  return schema ? JSON.stringify(schema, null, 1) : "";
}

async function render() {
  const root = document.getElementById("docs");
  const doc = await (await fetch("/docs/openapi.json")).json();
  const parts = [el("h1", null, `${doc.info.title} ${doc.info.version}`),
    el("p", "muted", "Every call needs Authorization: Bearer <token> (trainyard token create) unless marked public.")];
  const toc = el("ul", "toc");
  parts.push(toc);
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      if (!["get", "post", "put", "delete", "patch"].includes(method)) continue;
      const id = `${method}-${path}`.replace(/[^\w-]/g, "_");
      toc.append(el("li", null, Object.assign(el("a", null, `${method.toUpperCase()} ${path}`), { href: `#${id}` })));
      const card = el("section", "card operation");
      card.id = id;
      card.append(el("h2", null, el("code", null, `${method.toUpperCase()} ${path}`)));
      if (op.summary) card.append(el("p", null, op.summary));
      if (op.description) card.append(el("p", "muted", op.description));
      if (Array.isArray(op.security) && op.security.length === 0) card.append(el("p", "muted", "public: no token needed"));
      if (op.parameters && op.parameters.length) {
        const table = el("table", null, el("tr", null, el("th", null, "parameter"), el("th", null, "in"), el("th", null, "type"), el("th", null, "required"), el("th", null, "description")));
        for (const p of op.parameters) {
          table.append(el("tr", null, el("td", null, el("code", null, p.name)), el("td", null, p.in),
            el("td", null, (p.schema && (p.schema.type || (p.schema.oneOf || p.schema.anyOf || []).map((s) => s.type).join(" | "))) || ""),
            el("td", null, p.required ? "yes" : ""), el("td", null, p.description || "")));
        }
        card.append(table);
      }
      const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
      if (body) {
        const details = el("details", null, el("summary", null, "request body"), el("pre", null, schemaText(body.schema)));
        card.append(details);
      }
      const codes = Object.keys(op.responses || {});
      if (codes.length) card.append(el("p", "muted", `responses: ${codes.join(", ")}`));
      parts.push(card);
    }
  }
  root.replaceChildren(...parts);
}

render().catch((e) => { document.getElementById("docs").textContent = `Could not load the API description: ${e}`; });
