// Swagger UI on this server's OpenAPI document, started from a file: the Content-Security-Policy allows no
// inline script. Signed in on the dashboard (this tab, or remembered), it is authorized with the same key.
"use strict";
const ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  onComplete() {
    const key = sessionStorage.getItem("taas.key") || localStorage.getItem("taas.key");
    if (key) ui.preauthorizeApiKey("HTTPBearer", key);
  },
});
