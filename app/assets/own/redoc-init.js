// /redoc: ReDoc over this service's OpenAPI document, with the system's fonts (no CDN).
"use strict";
Redoc.init(new URL("openapi.json", document.baseURI).href, {
  typography: {fontFamily: "system-ui, sans-serif", headings: {fontFamily: "system-ui, sans-serif"}},
}, document.getElementById("redoc"));
