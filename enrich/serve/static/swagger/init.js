// Swagger UI on the server's own schema (the page's cookie carries the token to /openapi.json).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
