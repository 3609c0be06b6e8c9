// Test-only OAuth2 / OpenID Connect server for tokenlease's interop tests
// (core/tests/oidc_interop.rs): the npm package `oidc-provider`, pinned in package.json,
// which we did not write, on loopback http.
//
//   node tests/oidc/server.js [--lifetime SECONDS] [--token-delay-ms MS] [--exit-with-stdin]
//                             [--mount /PATH] [--no-openid-configuration]
//
// Listens on 127.0.0.1 with a port the OS picks and prints, once listening, one line
//   OIDC_PROVIDER_URL=http://127.0.0.1:PORT[/PATH]
// on stdout: the issuer. Exits by itself after --lifetime seconds (default 300), on
// SIGTERM/SIGINT, and with --exit-with-stdin when its standard input closes (the test
// process that spawned it is gone).
//
// --mount /PATH mounts oidc-provider under that path, as oidc-provider documents for a
// mounted provider (the issuer is http://127.0.0.1:PORT/PATH, the shape of Keycloak's
// /realms/NAME, Okta's /oauth2/ID or Entra ID's /TENANT/v2.0); anything outside the mount is
// a 404. Discovery then answers at both well-known URLs the specs define:
// - <issuer>/.well-known/openid-configuration (OpenID Connect Discovery 1.0 §4), and
// - http://127.0.0.1:PORT/.well-known/oauth-authorization-server/PATH (RFC 8414 §3: the
//   well-known segment inserted between host and path). oidc-provider serves its metadata
//   under its mount only, so this server routes that host-level URL to it, as the reverse
//   proxy in front of a mounted provider does; the document is oidc-provider's own.
// --no-openid-configuration answers 404 at <issuer>/.well-known/openid-configuration, like
// an OAuth2-only server that publishes RFC 8414 metadata alone.
//
// What it serves (all of it oidc-provider's own code, except the one grant marked below):
// - clients `tokenlease-basic` (client_secret_basic) and `tokenlease-post`
//   (client_secret_post), secret `tokenlease-secret`, scopes `api:read openid
//   offline_access` (`api:write` exists but is not allowed for them: invalid_scope);
// - client_credentials (features.clientCredentials), opaque tokens, or a JWT for the
//   resource indicator `urn:tokenlease:api`;
// - refresh_token with rotation (rotateRefreshToken: true): each use consumes the refresh
//   token and issues a new one; reusing a consumed one fails with invalid_grant and
//   revokes the whole grant (oidc-provider's reuse detection);
// - revocation (RFC 7009), introspection (RFC 7662), userinfo (a protected resource that
//   answers 401 with `error="invalid_token"` for a dead token);
// - TEST-ONLY custom grant `password` (RFC 6749 §4.3), registered with
//   provider.registerGrantType: oidc-provider issues refresh tokens only from the
//   authorization code, device and CIBA flows, which need a user at a browser. This grant
//   checks the fixed user `alice` / `wonderland` and issues an access token plus a refresh
//   token (models provider.Grant, provider.AccessToken, provider.RefreshToken) the way
//   the authorization_code grant does, so tokenlease's Grant::Password gets a refresh
//   token without a browser. Everything after that first token (refresh, rotation, reuse
//   detection, revocation, introspection) is oidc-provider's built-in code.
// - the public native client `tokenlease-app` (no secret, PKCE required, loopback redirect
//   `http://127.0.0.1/callback` on any port, RFC 8252): the authorization code flow, whose
//   login page is this server's `<mount>/interaction/<uid>` (TEST-ONLY, below): a POST of
//   alice's username and password logs her in and grants the requested scopes, and
//   oidc-provider redirects back with the code. Tests drive it with HTTP requests, as a
//   browser would; the authorization endpoint, PKCE, code redemption, replay revocation
//   and refresh are oidc-provider's own code.
// - GET /__stats (at the host's root, also with --mount): request counters, JSON
//   (token_requests counts every POST to the token endpoint, successful or not;
//   grants/errors count by grant type / error code; paths counts every request but these
//   by "METHOD /path").
// - the device authorization grant (RFC 8628, features.deviceFlow) for `tokenlease-app` and
//   `tokenlease-tv-brief` (whose device codes live DEVICE_BRIEF_TTL seconds). oidc-provider
//   sends no `interval` and never answers `slow_down`; this server (TEST-ONLY, as the
//   spec's server side) advertises `interval` DEVICE_INTERVAL and answers `slow_down` to a
//   pending poll that comes sooner than DEVICE_MIN_POLL seconds after the previous one, so
//   a client is seen to back off by 5 s. Polls, approval and denial are oidc-provider's.
// - TEST-ONLY, the user's browser (so tests in every language share one): at the host's root,
//   POST /__browser/authorize with JSON {"url": AUTHORIZATION_URL} follows the URL as a
//   browser would, logs alice in, and answers {"redirect": URL} with the first redirect
//   that leaves this server (the client's redirect URI with the code or the error);
//   POST /__browser/device with {"user_code": CODE, "approve": true|false} enters the code
//   at the verification page, confirms or aborts, logs alice in, answers {"done": true};
//   POST /__browser/revoke-grants ends every grant alice gave (as a user removing the app's
//   access in account settings): all their access and refresh tokens die at once.
// - clients that authenticate with signed assertions (RFC 7523 §2.2), all oidc-provider's own
//   code: `tokenlease-pkjwt` (private_key_jwt, RS256, kid `pkjwt-rs`), `tokenlease-pkjwt-es`
//   (private_key_jwt, ES256, kid `pkjwt-es`) and `tokenlease-secretjwt` (client_secret_jwt,
//   secret CLIENT_JWT_SECRET), client credentials with scope `api:read`. Their private keys are
//   made at start-up and written to DIR/<client_id>.pem when --client-keys-out DIR is given
//   (the clients exist only then).
// - mutual TLS (RFC 8705, features.mTLS, oidc-provider's own code) with --tls-cert F
//   --tls-key F --tls-ca F: the server listens with TLS (https issuer), asks for a client
//   certificate, and registers `tokenlease-mtls` (tls_client_auth, subject `CN=tokenlease-mtls`
//   from that CA) and, with --self-signed-client-cert F, `tokenlease-mtls-self`
//   (self_signed_tls_client_auth with that certificate); both get certificate-bound tokens.
// - DPoP (RFC 9449, features.dPoP, oidc-provider's own code) with server nonces required at
//   every endpoint; `tokenlease-dpop` (client_secret_basic) must use it
//   (dpop_bound_access_tokens), other clients may.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { X509Certificate } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

// Start-up phases go to stderr with their time since the process began, so a harness that
// gives up waiting can say where the server stood.
function phase(what) {
  console.error(`oidc test server: +${Math.round(performance.now())} ms ${what}`);
}
phase('modules loaded');

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  if (at === -1) return fallback;
  const value = Number(process.argv[at + 1]);
  if (!Number.isFinite(value) || value < 0) {
    console.error(`${name} needs a non-negative number`);
    process.exit(2);
  }
  return value;
}

const LIFETIME_SECONDS = option('--lifetime', 300);
const TOKEN_DELAY_MS = option('--token-delay-ms', 0);
const EXIT_WITH_STDIN = process.argv.includes('--exit-with-stdin');
const NO_OPENID_CONFIGURATION = process.argv.includes('--no-openid-configuration');
const CLIENT_KEYS_OUT = (() => {
  const at = process.argv.indexOf('--client-keys-out');
  return at === -1 ? undefined : process.argv[at + 1];
})();
const CLIENT_JWT_SECRET = 'tokenlease-client-secret-jwt-0123456789-abcdefghij';
function fileOption(name) {
  const at = process.argv.indexOf(name);
  return at === -1 ? undefined : readFileSync(process.argv[at + 1], 'utf8');
}
const TLS = fileOption('--tls-cert') && {
  cert: fileOption('--tls-cert'),
  key: fileOption('--tls-key'),
  ca: fileOption('--tls-ca'),
};
const SELF_SIGNED_CLIENT_CERT = fileOption('--self-signed-client-cert');

function mountOption() {
  const at = process.argv.indexOf('--mount');
  if (at === -1) return '';
  const value = process.argv[at + 1] || '';
  if (!/^(\/[A-Za-z0-9._~-]+)+$/.test(value)) {
    console.error('--mount needs a path such as /realms/tl');
    process.exit(2);
  }
  return value;
}
const MOUNT = mountOption();

const CLIENT_SECRET = 'tokenlease-secret';
const RESOURCE = 'urn:tokenlease:api';
const USERNAME = 'alice';
const PASSWORD = 'wonderland';
const ACCESS_TOKEN_TTL = 60;
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const DEVICE_INTERVAL = 1;
const DEVICE_MIN_POLL = 2;
const DEVICE_BRIEF_TTL = 3;

const stats = {
  token_requests: 0,
  revocation_requests: 0,
  introspection_requests: 0,
  grants: {},
  errors: {},
  revoked_grants: 0,
  paths: {},
};

function bump(counter, key) {
  counter[key] = (counter[key] || 0) + 1;
}

// Fresh signing keys and cookie keys per run (none of oidc-provider's development keys).
const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
phase('signing key generated');
const jwks = { keys: [{ ...signingKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' }] };

function staticClient(clientId, method) {
  return {
    client_id: clientId,
    client_secret: CLIENT_SECRET,
    token_endpoint_auth_method: method,
    grant_types: ['client_credentials', 'refresh_token', 'password'],
    response_types: [],
    redirect_uris: [],
    scope: 'api:read openid offline_access',
  };
}

// Clients authenticating with assertions: their keys are made now (test-time keys).
function assertionClient(clientId, type, options, kid) {
  const { privateKey, publicKey } = generateKeyPairSync(type, options);
  if (CLIENT_KEYS_OUT) {
    writeFileSync(`${CLIENT_KEYS_OUT}/${clientId}.pem`, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  }
  const alg = type === 'rsa' ? 'RS256' : 'ES256';
  return {
    client_id: clientId,
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: alg,
    jwks: { keys: [{ ...publicKey.export({ format: 'jwk' }), kid, use: 'sig', alg }] },
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'api:read',
  };
}
// Only when a test asks for their keys (--client-keys-out): key generation is start-up time.
const PKJWT_CLIENTS = CLIENT_KEYS_OUT ? [
  assertionClient('tokenlease-pkjwt', 'rsa', { modulusLength: 2048 }, 'pkjwt-rs'),
  assertionClient('tokenlease-pkjwt-es', 'ec', { namedCurve: 'P-256' }, 'pkjwt-es'),
] : [];
if (CLIENT_KEYS_OUT) phase('assertion client keys generated');
function mtlsClients() {
  if (!TLS) return [];
  const clients = [{
    client_id: 'tokenlease-mtls',
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: 'CN=tokenlease-mtls',
    tls_client_certificate_bound_access_tokens: true,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'api:read',
  }];
  if (SELF_SIGNED_CLIENT_CERT) {
    const certificate = new X509Certificate(SELF_SIGNED_CLIENT_CERT);
    clients.push({
      client_id: 'tokenlease-mtls-self',
      token_endpoint_auth_method: 'self_signed_tls_client_auth',
      tls_client_certificate_bound_access_tokens: true,
      jwks: { keys: [{ ...certificate.publicKey.export({ format: 'jwk' }), x5c: [certificate.raw.toString('base64')] }] },
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'api:read',
    });
  }
  return clients;
}

const DPOP_CLIENT = {
  ...staticClient('tokenlease-dpop', 'client_secret_basic'),
  dpop_bound_access_tokens: true,
};
const SECRET_JWT_CLIENT = {
  client_id: 'tokenlease-secretjwt',
  client_secret: CLIENT_JWT_SECRET,
  token_endpoint_auth_method: 'client_secret_jwt',
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'api:read',
};

// A public native app (RFC 8252): no secret, PKCE, a loopback redirect on any port.
const APP_CLIENT = {
  client_id: 'tokenlease-app',
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  grant_types: ['authorization_code', 'refresh_token', DEVICE_GRANT],
  response_types: ['code'],
  redirect_uris: ['http://127.0.0.1/callback'],
  scope: 'api:read openid offline_access',
};

// A public device client (a TV, a CLI) whose device codes expire after DEVICE_BRIEF_TTL s.
const BRIEF_DEVICE_CLIENT = {
  client_id: 'tokenlease-tv-brief',
  token_endpoint_auth_method: 'none',
  grant_types: [DEVICE_GRANT, 'refresh_token'],
  response_types: [],
  redirect_uris: [],
  scope: 'api:read openid offline_access',
};

// Every grant alice gave, for /__browser/revoke-grants.
const grantIds = new Set();

function configuration() {
  return {
    clients: [
      staticClient('tokenlease-basic', 'client_secret_basic'),
      staticClient('tokenlease-post', 'client_secret_post'),
      APP_CLIENT,
      BRIEF_DEVICE_CLIENT,
      ...PKJWT_CLIENTS,
      SECRET_JWT_CLIENT,
      DPOP_CLIENT,
      ...mtlsClients(),
    ],
    clientAuthMethods: [
      'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt', 'none',
      ...(TLS ? ['tls_client_auth', 'self_signed_tls_client_auth'] : []),
    ],
    // The login and consent pages of this server (handled below, not oidc-provider's
    // development pages): a test drives them with HTTP requests, as a browser would.
    interactions: {
      url: (_ctx, interaction) => `${MOUNT}/interaction/${interaction.uid}`,
    },
    // A refresh token for every code of a client allowed the refresh grant (the OIDC rule
    // tying it to offline_access + prompt=consent is not what these tests are about).
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    jwks,
    cookies: { keys: [randomBytes(32).toString('hex')] },
    scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
    claims: { openid: ['sub'] },
    async findAccount(_ctx, accountId) {
      if (accountId !== USERNAME) return undefined;
      return { accountId, async claims() { return { sub: accountId }; } };
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Any authenticated client of this test server may introspect any token.
        allowedPolicy: async () => true,
      },
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
      },
      userinfo: { enabled: true },
      mTLS: {
        enabled: Boolean(TLS),
        certificateBoundAccessTokens: true,
        selfSignedTlsClientAuth: true,
        tlsClientAuth: true,
        getCertificate(ctx) {
          const peer = ctx.req.socket.getPeerCertificate && ctx.req.socket.getPeerCertificate();
          if (!peer || !peer.raw) return undefined;
          return new X509Certificate(peer.raw).toString();
        },
        certificateAuthorized(ctx) {
          return ctx.req.socket.authorized === true;
        },
        certificateSubjectMatches(ctx, property, expected) {
          if (property !== 'tls_client_auth_subject_dn') return false;
          const peer = ctx.req.socket.getPeerCertificate();
          const subject = new X509Certificate(peer.raw).subject.split('\n').join(',');
          return subject === expected;
        },
      },
      dPoP: {
        enabled: true,
        nonceSecret: randomBytes(32),
        requireNonce: () => true,
      },
      deviceFlow: {
        enabled: true,
        // Plain pages: the simulated browser below reads their forms.
        async userCodeInputSource(ctx, form) {
          ctx.body = `<!DOCTYPE html><html><body>${form}<button type="submit" form="op.deviceInputForm">Continue</button></body></html>`;
        },
        async userCodeConfirmSource(ctx, form) {
          ctx.body = `<!DOCTYPE html><html><body>${form}</body></html>`;
        },
        async successSource(ctx) {
          ctx.body = '<!DOCTYPE html><html><body>signed in</body></html>';
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator) => {
          if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
          return {
            scope: 'api:read api:write',
            audience: RESOURCE,
            accessTokenTTL: ACCESS_TOKEN_TTL,
            accessTokenFormat: 'jwt',
          };
        },
      },
    },
    rotateRefreshToken: true,
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      ClientCredentials: ACCESS_TOKEN_TTL,
      IdToken: ACCESS_TOKEN_TTL,
      RefreshToken: 3600,
      Grant: 3600,
      DeviceCode: (_ctx, _token, client) => (
        client && client.clientId === BRIEF_DEVICE_CLIENT.client_id ? DEVICE_BRIEF_TTL : 600
      ),
    },
    // Errors go to the client as JSON; nothing renders HTML here.
    async renderError(ctx, out) {
      ctx.type = 'json';
      ctx.body = out;
    },
  };
}

// TEST-ONLY: the resource owner password grant (see the header comment).
function registerPasswordGrant(provider) {
  const allowed = new Set(['openid', 'offline_access']);
  async function passwordGrant(ctx) {
    const { client, params } = ctx.oidc;
    if (params.username !== USERNAME || params.password !== PASSWORD) {
      throw new errors.InvalidGrant('invalid resource owner credentials');
    }
    const scopes = params.scope ? params.scope.split(' ') : ['openid', 'offline_access'];
    for (const scope of scopes) {
      if (!allowed.has(scope)) {
        throw new errors.InvalidScope('requested scope is not allowed', scope);
      }
    }
    const scope = scopes.join(' ');
    const accountId = USERNAME;

    const grant = new provider.Grant({ accountId, clientId: client.clientId });
    grant.addOIDCScope(scope);
    const grantId = await grant.save();
    grantIds.add(grantId);

    const at = new provider.AccessToken({
      accountId, client, grantId, gty: 'password', scope,
    });
    const accessToken = await at.save();

    let refreshToken;
    if (scopes.includes('offline_access')) {
      const rt = new provider.RefreshToken({
        accountId, client, grantId, gty: 'password', scope, rotations: 0,
      });
      refreshToken = await rt.save();
    }

    ctx.body = {
      access_token: accessToken,
      token_type: 'Bearer',
      expires_in: at.expiration,
      refresh_token: refreshToken,
      scope,
    };
  }
  provider.registerGrantType('password', passwordGrant, ['username', 'password', 'scope']);
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

const OIDC_DISCOVERY = '/.well-known/openid-configuration';
const RFC8414_DISCOVERY = '/.well-known/oauth-authorization-server';

let callback = (_req, res) => sendJson(res, 503, { error: 'temporarily_unavailable' });
let provider;

// Hands a request for `innerPath` (a path of the provider's own routes) to oidc-provider
// mounted at MOUNT: req.url is the path inside the mount, req.originalUrl the full one
// (oidc-provider reads the mount path from the two, as under express/connect).
function toProvider(req, res, innerPath, search) {
  req.originalUrl = `${MOUNT}${innerPath}${search}`;
  req.url = `${innerPath}${search}`;
  bump(stats.paths, `${req.method} ${MOUNT}${innerPath}`);
  if (req.method === 'POST' && innerPath === '/token') {
    stats.token_requests += 1;
    if (TOKEN_DELAY_MS > 0) {
      setTimeout(() => callback(req, res), TOKEN_DELAY_MS);
      return;
    }
  }
  if (req.method === 'POST' && innerPath === '/token/revocation') stats.revocation_requests += 1;
  if (req.method === 'POST' && innerPath === '/token/introspection') stats.introspection_requests += 1;
  callback(req, res);
}

// The login page: GET shows a form; POST with username/password logs alice in and grants
// the scopes the client asked for (login and consent in one step), then oidc-provider
// redirects the browser back to the client with a code.
async function interaction(req, res, url) {
  bump(stats.paths, `${req.method} ${MOUNT}/interaction`);
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<form method="post"><input name="username"><input name="password" type="password"></form>');
    return;
  }
  const body = await new Promise((resolve) => {
    let text = '';
    req.on('data', (chunk) => { text += chunk; });
    req.on('end', () => resolve(new URLSearchParams(text)));
  });
  req.originalUrl = url.pathname + url.search;
  const details = await provider.interactionDetails(req, res);
  if (body.get('username') !== USERNAME || body.get('password') !== PASSWORD) {
    stats.login_failures = (stats.login_failures || 0) + 1;
    sendJson(res, 401, { error: 'login_failed' });
    return;
  }
  const grant = new provider.Grant({ accountId: USERNAME, clientId: details.params.client_id });
  if (details.params.scope) grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  grantIds.add(grantId);
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: USERNAME }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

// TEST-ONLY: the user's browser (see the header comment). Real HTTP requests to this
// server, with a cookie jar, following redirects by hand.
async function readJson(req) {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 65536) throw new Error('request body too large');
  }
  return JSON.parse(text || '{}');
}

function browser() {
  const cookies = new Map();
  return async function visit(url, form) {
    const headers = { cookie: [...cookies].map(([name, value]) => `${name}=${value}`).join('; ') };
    const init = { method: form ? 'POST' : 'GET', headers, redirect: 'manual' };
    if (form) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      init.body = new URLSearchParams(form).toString();
    }
    const response = await fetch(url, init);
    for (const set of response.headers.getSetCookie()) {
      const [pair] = set.split(';');
      const at = pair.indexOf('=');
      if (at > 0) cookies.set(pair.slice(0, at).trim(), pair.slice(at + 1).trim());
    }
    const location = response.headers.get('location');
    return {
      status: response.status,
      location: location ? new URL(location, url).toString() : undefined,
      body: await response.text(),
    };
  };
}

const LOGIN_FORM = { username: USERNAME, password: PASSWORD };

// Follows redirects (logging in at the login page) until one leaves this server.
async function browse(visit, startUrl, origin, firstForm) {
  let url = startUrl;
  let form = firstForm;
  for (let hop = 0; hop < 12; hop += 1) {
    if (new URL(url).origin !== origin) return { redirect: url };
    const page = await visit(url, form);
    form = undefined;
    if (page.location) {
      url = page.location;
      if (new URL(url).pathname.startsWith(`${MOUNT}/interaction/`)) {
        const login = await visit(url, LOGIN_FORM);
        if (!login.location) throw new Error(`the login page answered ${login.status}: ${login.body}`);
        url = login.location;
      }
      continue;
    }
    return { status: page.status, body: page.body };
  }
  throw new Error('more than 12 redirects');
}

function formField(html, name) {
  const match = new RegExp(`name="${name}"[^>]*value="([^"]*)"`).exec(html)
    || new RegExp(`value="([^"]*)"[^>]*name="${name}"`).exec(html);
  return match ? match[1] : undefined;
}

async function browserRoute(req, res, path, origin) {
  const body = await readJson(req);
  if (path === '/__browser/authorize') {
    if (typeof body.url !== 'string' || new URL(body.url).origin !== origin) {
      sendJson(res, 400, { error: 'url must be an authorization URL of this server' });
      return;
    }
    const outcome = await browse(browser(), body.url, origin);
    sendJson(res, outcome.redirect ? 200 : 502, outcome);
    return;
  }
  if (path === '/__browser/device') {
    const visit = browser();
    const verification = `${origin}${MOUNT}/device`;
    const input = await visit(verification);
    const xsrf = formField(input.body, 'xsrf');
    if (!xsrf) throw new Error(`no xsrf field on the verification page: ${input.body}`);
    const confirm = await visit(verification, { xsrf, user_code: String(body.user_code || '') });
    const confirmXsrf = formField(confirm.body, 'xsrf');
    if (!confirmXsrf) {
      sendJson(res, 400, { error: 'user code refused', page: confirm.body });
      return;
    }
    const choice = body.approve === false ? { abort: 'yes' } : { confirm: 'yes' };
    const outcome = await browse(visit, verification, origin, {
      xsrf: confirmXsrf, user_code: String(body.user_code), ...choice,
    });
    sendJson(res, 200, { done: true, status: outcome.status });
    return;
  }
  if (path === '/__browser/revoke-grants') {
    let revoked = 0;
    for (const grantId of grantIds) {
      await Promise.all([
        provider.AccessToken.revokeByGrantId(grantId),
        provider.RefreshToken.revokeByGrantId(grantId),
        provider.AuthorizationCode.revokeByGrantId(grantId),
        provider.DeviceCode.revokeByGrantId(grantId),
        provider.Grant.adapter.destroy(grantId),
      ]);
      revoked += 1;
    }
    grantIds.clear();
    stats.revoked_grants += revoked;
    sendJson(res, 200, { revoked });
    return;
  }
  sendJson(res, 404, { error: 'not_found' });
}

// TEST-ONLY (see the header comment): `interval` in device authorization responses, and
// `slow_down` for a pending poll sooner than DEVICE_MIN_POLL s after the previous one.
const lastPoll = new Map();
function deviceFlowPacing(ctx, next) {
  return next().then(() => {
    if (ctx.method === 'POST' && ctx.path === '/device/auth' && ctx.status === 200 && ctx.body) {
      ctx.body = { ...ctx.body, interval: DEVICE_INTERVAL };
      return;
    }
    const params = ctx.oidc && ctx.oidc.params;
    if (ctx.method !== 'POST' || ctx.path !== '/token' || !params || params.grant_type !== DEVICE_GRANT) return;
    const now = Date.now();
    const previous = lastPoll.get(params.device_code);
    lastPoll.set(params.device_code, now);
    const pending = ctx.body && ctx.body.error === 'authorization_pending';
    if (pending && previous !== undefined && now - previous < DEVICE_MIN_POLL * 1000) {
      bump(stats.errors, 'slow_down');
      ctx.status = 400;
      ctx.body = { error: 'slow_down', error_description: 'polling too quickly' };
    }
  });
}

const handler = (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const path = url.pathname;
  if (provider && req.method === 'POST' && path.startsWith('/__browser/')) {
    const { port } = server.address();
    browserRoute(req, res, path, `http://127.0.0.1:${port}`).catch((err) => {
      console.error('oidc test server: browser failed', err);
      if (!res.headersSent) sendJson(res, 500, { error: 'browser_failed', detail: String(err.message) });
    });
    return;
  }
  if (provider && path.startsWith(`${MOUNT}/interaction/`)) {
    interaction(req, res, url).catch((err) => {
      console.error('oidc test server: interaction failed', err);
      if (!res.headersSent) sendJson(res, 400, { error: 'interaction_failed', detail: String(err.message) });
    });
    return;
  }
  if (req.method === 'GET' && path === '/__stats') {
    sendJson(res, 200, stats);
    return;
  }
  // RFC 8414 §3: the host-level well-known URL of an issuer with a path.
  if (MOUNT && path === `${RFC8414_DISCOVERY}${MOUNT}`) {
    toProvider(req, res, RFC8414_DISCOVERY, url.search);
    return;
  }
  let inner;
  if (!MOUNT) {
    inner = path;
  } else if (path === MOUNT || path.startsWith(`${MOUNT}/`)) {
    inner = path.slice(MOUNT.length) || '/';
  } else {
    bump(stats.paths, `${req.method} ${path}`);
    sendJson(res, 404, { error: 'not_found', error_description: 'outside the provider mount' });
    return;
  }
  if (NO_OPENID_CONFIGURATION && inner === OIDC_DISCOVERY) {
    bump(stats.paths, `${req.method} ${path}`);
    sendJson(res, 404, { error: 'not_found' });
    return;
  }
  toProvider(req, res, inner, url.search);
};
// With TLS, the client certificate is asked for but judged by oidc-provider (per client).
const server = TLS
  ? https.createServer({ ...TLS, requestCert: true, rejectUnauthorized: false }, handler)
  : http.createServer(handler);

function shutdown(code) {
  server.close();
  server.closeAllConnections();
  process.exit(code);
}

process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
setTimeout(() => {
  console.error(`oidc test server: lifetime of ${LIFETIME_SECONDS} s is over, exiting`);
  shutdown(0);
}, LIFETIME_SECONDS * 1000);
if (EXIT_WITH_STDIN) {
  process.stdin.on('end', () => shutdown(0));
  process.stdin.on('error', () => shutdown(0));
  process.stdin.resume();
}

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `${TLS ? 'https' : 'http'}://127.0.0.1:${port}${MOUNT}`;
  phase('port bound');
  provider = new Provider(issuer, configuration());
  phase('provider configured');
  registerPasswordGrant(provider);
  provider.use(deviceFlowPacing);
  provider.on('grant.success', (ctx) => bump(stats.grants, ctx.oidc.params.grant_type));
  provider.on('grant.error', (_ctx, err) => bump(stats.errors, err.error || 'unknown'));
  provider.on('server_error', (_ctx, err) => {
    bump(stats.errors, 'server_error');
    console.error('oidc test server: server_error', err);
  });
  provider.on('grant.revoked', () => {
    stats.revoked_grants += 1;
  });
  callback = provider.callback();
  phase('listening');
  process.stdout.write(`OIDC_PROVIDER_URL=${issuer}\n`);
});
