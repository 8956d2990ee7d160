#!/usr/bin/env node
// A keyrelay client in Node.js for the interop test: it loads the .proto files at run time with
// @grpc/proto-loader (no generated code), connects with mutual TLS and runs the calls it is
// given, the way a Node application would use keyrelay without the Python SDK.
//
// Instructions are one JSON object, as the first argument or on standard input:
//
//   {
//     "endpoint": "127.0.0.1:7443",
//     "ca": "<PEM>", "cert": "<PEM>", "key": "<PEM>",   // server CA, client certificate and key
//     "protos": "/path/to/protos",                     // default: the repository's protos/
//     "timeout": 20,                                   // seconds per call (default 20)
//     "calls": [
//       {"service": "KeyManagementService", "method": "Encrypt",
//        "request": {"key_id": "alias/x", "plaintext": "<base64>", "encryption_context": {"k": "v"}}}
//     ]
//   }
//
// Field names are the .proto names; bytes are base64, enums their names, 64-bit integers strings.
// It prints one JSON object: {"results": [...]} with, per call in order, either
// {"ok": true, "response": {...}} or {"ok": false, "code": 3, "code_name": "INVALID_ARGUMENT",
// "details": "...", "trailers": {"keyrelay-error-reason": "...", ...}}. A failed call does not stop
// the ones after it. Exit status 0 when every call ran (failed or not), 2 for bad instructions.

"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PACKAGE = "keyrelay.v1";
const DEFAULT_PROTOS = path.resolve(__dirname, "..", "..", "..", "protos");
const DEFAULT_TIMEOUT_SECONDS = 20;

class UsageError extends Error {}

function readInstructions() {
  const text = process.argv.length > 2 ? process.argv[2] : fs.readFileSync(0, "utf8");
  let instructions;
  try {
    instructions = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`instructions are not valid JSON: ${err.message}`);
  }
  for (const name of ["endpoint", "ca", "cert", "key"]) {
    if (typeof instructions[name] !== "string" || instructions[name] === "") {
      throw new UsageError(`instructions need "${name}" (a string)`);
    }
  }
  if (!Array.isArray(instructions.calls)) {
    throw new UsageError('instructions need "calls" (a list)');
  }
  return instructions;
}

function loadPackage(protosDir) {
  const folder = path.join(protosDir, "keyrelay", "v1");
  const files = fs.readdirSync(folder).filter((name) => name.endsWith(".proto")).sort();
  if (files.length === 0) {
    throw new UsageError(`no .proto files in ${folder}`);
  }
  const definition = protoLoader.loadSync(
    files.map((name) => path.join("keyrelay", "v1", name)),
    {
      includeDirs: [protosDir],
      keepCase: true, // key_id, not keyId: the names of the .proto files
      longs: String,
      enums: String,
      bytes: String, // base64
      defaults: true,
      oneofs: true,
    },
  );
  return grpc.loadPackageDefinition(definition).keyrelay.v1;
}

function trailersOf(metadata) {
  const trailers = {};
  if (!metadata) {
    return trailers;
  }
  for (const [key, value] of Object.entries(metadata.getMap())) {
    trailers[key] = Buffer.isBuffer(value) ? value.toString("base64") : String(value);
  }
  return trailers;
}

function codeName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) || "UNKNOWN";
}

function invoke(client, method, request, metadata, timeoutSeconds) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + timeoutSeconds * 1000);
    client[method](request, metadata, { deadline }, (err, response) => {
      if (err) {
        resolve({
          ok: false,
          code: err.code,
          code_name: codeName(err.code),
          details: err.details || "",
          trailers: trailersOf(err.metadata),
        });
      } else {
        resolve({ ok: true, response });
      }
    });
  });
}

async function main() {
  const instructions = readInstructions();
  const services = loadPackage(instructions.protos || DEFAULT_PROTOS);
  const credentials = grpc.credentials.createSsl(
    Buffer.from(instructions.ca),
    Buffer.from(instructions.key),
    Buffer.from(instructions.cert),
  );
  const timeout = instructions.timeout || DEFAULT_TIMEOUT_SECONDS;
  const clients = new Map();
  const results = [];
  try {
    for (const call of instructions.calls) {
      const Service = services[call.service];
      if (typeof Service !== "function" || !Service.service) {
        throw new UsageError(`no service ${PACKAGE}.${call.service} in the protos`);
      }
      if (!Object.prototype.hasOwnProperty.call(Service.service, call.method)) {
        throw new UsageError(`${PACKAGE}.${call.service} has no method ${call.method}`);
      }
      if (!clients.has(call.service)) {
        clients.set(call.service, new Service(instructions.endpoint, credentials));
      }
      const metadata = new grpc.Metadata();
      for (const [key, value] of Object.entries(call.metadata || {})) {
        metadata.set(key, String(value));
      }
      results.push(await invoke(clients.get(call.service), call.method, call.request || {}, metadata, timeout));
    }
  } finally {
    for (const client of clients.values()) {
      client.close();
    }
  }
  process.stdout.write(JSON.stringify({ results }) + "\n");
}

main().catch((err) => {
  process.stderr.write(`client.js: ${err instanceof UsageError ? err.message : err.stack}\n`);
  process.exitCode = 2;
});
