/**
 * What the redactor looks for: the rule table. Data only; the scanner is in
 * scan.ts and the three rules written as code are in generic.ts, pem.ts and
 * url.ts.
 *
 * Source. Token formats, keywords, entropy thresholds and allowlists come
 * from gitleaks' default rules, config/gitleaks.toml in
 * github.com/gitleaks/gitleaks (MIT, Copyright (c) 2019 Zachary Rice; see
 * THIRD_PARTY_NOTICES.md), at commit 009e025ad4106ab333aa0b9dc4f2a884390d134c
 * (it has the Anthropic rules of gitleaks#1910, July 2025, and not yet the
 * Looker rules of v8.30.0). Each rule keeps its gitleaks id. Rules gitleaks
 * has no counterpart for are ours and marked `portcullis`.
 *
 * Adaptations that apply to every gitleaks rule below (rule-specific ones are
 * beside each rule):
 * 1. Trailing context. gitleaks ends many tokens with
 *    `(?:[\x60'"\s;]|\\[nr]|$)`: the token must be followed by a quote,
 *    whitespace, `;`, an escaped newline or the end. That suits source code;
 *    in tool output a token is also followed by `&`, `#`, `)`, `,`, `.`, `<`
 *    or `]` (URLs, Markdown, HTML, prose), where gitleaks would miss it. Here
 *    it is "any character that cannot continue the token, or the end".
 * 2. Keywords are gitleaks' (lowercase ASCII), matched ASCII-case-
 *    insensitively; a keyword must occur inside every match (the scanner runs
 *    a rule only in a window around its keywords, see scan.ts), which holds
 *    for every rule here and is why two keywords are adjusted (`jwt`,
 *    `slack-config-access-token`).
 * 3. Allowlists are kept where gitleaks has them, applied to the secret.
 *    gitleaks' global allowlist (placeholders such as `${VAR}`, `{{ x }}`,
 *    `%VAR%`, `true`/`false`/`null`, runs of one letter, system paths; two
 *    stopwords) applies to every rule's secret, and so does one of ours: a
 *    secret that contains `EXAMPLE` (upper case) is the documentation's, as in
 *    AWS's AKIAIOSFODNN7EXAMPLE and wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY,
 *    generalised from gitleaks' `.+EXAMPLE$` on aws-access-token (a generated
 *    key spells that word by chance about once in 10^12).
 *
 * Window bounds. `before` is the most characters a match can start before
 * the start of the keyword it contains, `after` the most it can end after it
 * (counting a consumed trailing character); `after: undefined` means no bound:
 * from its keyword on, the match is one run of `run` characters (as a JWT
 * is) and one character after it. `secretBefore` is the most the redacted
 * group can start before the keyword. They are worked out by hand from each
 * pattern; the tests check every corpus secret against them.
 */

/** Where a rule's pattern comes from. */
export type RuleSource = 'gitleaks' | 'portcullis';

/** A rule the scanner runs as an RE2 pattern. */
export interface PatternRule {
  readonly kind: 'pattern';
  readonly id: string;
  readonly description: string;
  readonly source: RuleSource;
  /** RE2 syntax. */
  readonly regex: string;
  /** The capture group that is redacted (0: the whole match). */
  readonly secretGroup: number;
  readonly keywords: readonly string[];
  /** Shannon entropy (bits per character) the secret must exceed. */
  readonly entropy?: number;
  /** RE2 patterns on the secret: a secret one of them finds is not redacted. */
  readonly allow?: readonly string[];
  readonly before: number;
  readonly after: number | undefined;
  readonly secretBefore: number;
  /** For an unbounded rule: the characters its match is made of after the keyword. */
  readonly run?: string;
}

/** A rule written as code (generic.ts, pem.ts, url.ts). */
export interface CodeRule {
  readonly kind: 'generic' | 'pem' | 'url';
  readonly id: string;
  readonly description: string;
  readonly source: RuleSource;
  readonly keywords: readonly string[];
  readonly secretBefore: number;
}

export type RuleSpec = PatternRule | CodeRule;

/** The gitleaks commit the patterns were taken from. */
export const GITLEAKS_COMMIT = '009e025ad4106ab333aa0b9dc4f2a884390d134c';

/**
 * aws-secret-access-key's keywords: its label with each separator it allows
 * (`secret_access_key`, `SecretAccessKey`, `secret-access-key`, …), so that
 * its pattern runs only where the label is, not at every "secret".
 */
const AWS_SECRET_LABELS = ['', '_', '.', '-', ' '].flatMap((a) =>
  ['', '_', '.', '-', ' '].map((b) => `secret${a}access${b}key`),
);

/** Characters a base64url token is made of (JWT segments plus gitleaks' escaped `\/`). */
const JWT_RUN = String.raw`A-Za-z0-9_\-./\\=`;
const SLACK_RUN = String.raw`A-Za-z0-9\-`;

function gitlab(id: string, prefix: string, body: string, bodyChars: number): PatternRule {
  return {
    kind: 'pattern',
    id,
    description: `GitLab token ${prefix}…`,
    source: 'gitleaks',
    regex: `${prefix.replaceAll('.', String.raw`\.`)}${body}`,
    secretGroup: 0,
    keywords: [prefix.toLowerCase()],
    entropy: 3,
    before: 0,
    after: prefix.length + bodyChars,
    secretBefore: 0,
  };
}

/**
 * The rules, in order of precedence: where two findings start at the same
 * character, the earlier rule names the merged finding. Specific formats
 * come first, generic-api-key last.
 */
export const RULE_SPECS: readonly RuleSpec[] = [
  {
    // gitleaks' private-key regex, `(?i)-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE
    // KEY(?: BLOCK)?-----[\s\S-]{64,}?KEY(?: BLOCK)?-----`, run as code so that
    // the block has a bound (pem.ts): RE2 repeats at most 1000 times.
    // Adapted: a BEGIN line with no END within the bound is a truncated key
    // and its body is redacted (gitleaks reports nothing).
    kind: 'pem',
    id: 'private-key',
    description:
      'PEM private key block (RSA, EC, DSA, OPENSSH, PKCS#8, ENCRYPTED, PGP PRIVATE KEY BLOCK), also inside a JSON string such as a GCP service-account private_key',
    source: 'gitleaks',
    keywords: ['-----begin'],
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'aws-access-token',
    description: 'AWS access key id (AKIA…, ASIA…, ABIA…, ACCA…, A3T…)',
    source: 'gitleaks',
    regex: String.raw`\b((?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b`,
    secretGroup: 1,
    keywords: ['a3t', 'akia', 'asia', 'abia', 'acca'],
    entropy: 3,
    allow: [String.raw`.+EXAMPLE$`],
    before: 0,
    after: 20,
    secretBefore: 0,
  },
  {
    // Ours: gitleaks has no rule for the secret half of an AWS key pair. It
    // is 40 base64 characters and is recognised only by its label
    // (aws_secret_access_key = …, "SecretAccessKey": "…"), written in the
    // shape of gitleaks' generic assignment.
    kind: 'pattern',
    id: 'aws-secret-access-key',
    description: 'AWS secret access key, when labelled as one',
    source: 'portcullis',
    regex: String.raw`(?i)(?:aws)?[_.\- ]?secret[_.\- ]?access[_.\- ]?key(?:[ \t\w.-]{0,20})(?:[\s'"]|\\['"]){0,3}(?:=>|:=|=|:)(?:[\x60'"\s]|\\['"]){0,5}([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)`,
    secretGroup: 1,
    keywords: AWS_SECRET_LABELS,
    entropy: 3,
    // "aws" and one separator before the label; after its start: the label
    // (at most 17), 20, 3 quotes (escaped: 6), 2, 5 quotes (10), the key, one
    // character. Escaped quotes (`\"`) are read as quotes, as in generic.ts.
    before: 4,
    after: 17 + 20 + 6 + 2 + 10 + 40 + 1,
    secretBefore: 0,
  },
  {
    // Adapted: trailing context (header, 1).
    kind: 'pattern',
    id: 'gcp-api-key',
    description: 'Google Cloud API key (AIza…)',
    source: 'gitleaks',
    regex: String.raw`\b(AIza[\w-]{35})(?:[^\w-]|$)`,
    secretGroup: 1,
    keywords: ['aiza'],
    entropy: 4,
    // gitleaks' list of keys published in Google's and Firebase's examples.
    allow: [
      'AIzaSyabcdefghijklmnopqrstuvwxyz1234567',
      'AIzaSyAnLA7NfeLquW1tJFpx_eQCxoX-oo6YyIs',
      'AIzaSyCkEhVjf3pduRDt6d1yKOMitrUEke8agEM',
      'AIzaSyDMAScliyLx7F0NPDEJi1QmyCgHIAODrlU',
      'AIzaSyD3asb-2pEZVqMkmL6M9N6nHZRR_znhrh0',
      'AIzayDNSXIbFmlXbIE6mCzDLQAqITYefhixbX4A',
      'AIzaSyAdOS2zB6NCsk1pCdZ4-P6GBdi_UUPwX7c',
      'AIzaSyASWm6HmTMdYWpgMnjRBjxcQ9CKctWmLd4',
      'AIzaSyANUvH9H9BsUccjsu2pCmEkOPjjaXeDQgY',
      'AIzaSyA5_iVawFQ8ABuTZNUdcwERLJv_a_p4wtM',
      'AIzaSyA4UrcGxgwQFTfaI3no3t7Lt1sjmdnP5sQ',
      'AIzaSyDSb51JiIcB6OJpwwMicseKRhhrOq1cS7g',
      'AIzaSyBF2RrAIm4a0mO64EShQfqfd2AFnzAvvuU',
      'AIzaSyBcE-OOIbhjyR83gm4r2MFCu4MJmprNXsw',
      'AIzaSyB8qGxt4ec15vitgn44duC5ucxaOi4FmqE',
      'AIzaSyA8vmApnrHNFE0bApF4hoZ11srVL_n0nvY',
    ].map((k) => `^${k}$`),
    before: 0,
    after: 40,
    secretBefore: 0,
  },
  {
    // Adapted: gitleaks accepts only `\ ' " \x60 whitespace > = : ( , )` before
    // the secret and `\ ' " \x60 whitespace < ) ,` after it; here, any
    // character that cannot be part of one (header, 1).
    kind: 'pattern',
    id: 'azure-ad-client-secret',
    description: 'Azure AD (Entra ID) application client secret (…8Q~…)',
    source: 'gitleaks',
    regex: String.raw`(?:^|[^a-zA-Z0-9_~.\-])([a-zA-Z0-9_~.]{3}\dQ~[a-zA-Z0-9_~.\-]{31,34})(?:[^a-zA-Z0-9_~.\-]|$)`,
    secretGroup: 1,
    keywords: ['q~'],
    entropy: 3,
    before: 5,
    after: 37,
    secretBefore: 4,
  },
  {
    // Ours: gitleaks has no rule for Azure connection strings. AccountKey is a
    // storage account key (64 bytes, 88 base64 characters); SharedAccessKey
    // is a Service Bus / Event Hubs SAS key (32 bytes, 44). The value only.
    kind: 'pattern',
    id: 'azure-storage-account-key',
    description:
      'Azure storage account key or SAS key in a connection string (AccountKey=…, SharedAccessKey=…)',
    source: 'portcullis',
    regex: String.raw`(?i:AccountKey|SharedAccessKey)[ \t]{0,5}=[ \t]{0,5}([A-Za-z0-9+/]{40,86}={0,2})(?:[^A-Za-z0-9+/=]|$)`,
    secretGroup: 1,
    keywords: ['accountkey', 'sharedaccesskey'],
    entropy: 3.5,
    before: 0,
    after: 115,
    secretBefore: 0,
  },
  {
    // Adapted: gitleaks' keyword is "ey", which most English text holds
    // ("key", "they"); a JWT's header is JSON, so it starts `eyJ` (`{"`) and
    // the keyword here is "eyj". The header may hold `-` and `_` (base64url);
    // trailing context (header, 1).
    kind: 'pattern',
    id: 'jwt',
    description: 'JSON Web Token (eyJ….eyJ….…)',
    source: 'gitleaks',
    regex: String.raw`\b(eyJ[a-zA-Z0-9_\-]{16,}\.ey[a-zA-Z0-9\/\\_\-]{17,}\.(?:[a-zA-Z0-9\/\\_\-]{10,}={0,2})?)(?:[^a-zA-Z0-9\/\\_=\-]|$)`,
    secretGroup: 1,
    keywords: ['eyj'],
    entropy: 3,
    before: 0,
    after: undefined,
    run: JWT_RUN,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'github-pat',
    description: 'GitHub personal access token (ghp_…)',
    source: 'gitleaks',
    regex: String.raw`ghp_[0-9a-zA-Z]{36}`,
    secretGroup: 0,
    keywords: ['ghp_'],
    entropy: 3,
    before: 0,
    after: 40,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'github-fine-grained-pat',
    description: 'GitHub fine-grained personal access token (github_pat_…)',
    source: 'gitleaks',
    regex: String.raw`github_pat_\w{82}`,
    secretGroup: 0,
    keywords: ['github_pat_'],
    entropy: 3,
    before: 0,
    after: 93,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'github-oauth',
    description: 'GitHub OAuth access token (gho_…)',
    source: 'gitleaks',
    regex: String.raw`gho_[0-9a-zA-Z]{36}`,
    secretGroup: 0,
    keywords: ['gho_'],
    entropy: 3,
    before: 0,
    after: 40,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'github-app-token',
    description: 'GitHub App user-to-server or installation token (ghu_…, ghs_…)',
    source: 'gitleaks',
    regex: String.raw`(?:ghu|ghs)_[0-9a-zA-Z]{36}`,
    secretGroup: 0,
    keywords: ['ghu_', 'ghs_'],
    entropy: 3,
    before: 0,
    after: 40,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'github-refresh-token',
    description: 'GitHub refresh token (ghr_…)',
    source: 'gitleaks',
    regex: String.raw`ghr_[0-9a-zA-Z]{36}`,
    secretGroup: 0,
    keywords: ['ghr_'],
    entropy: 3,
    before: 0,
    after: 40,
    secretBefore: 0,
  },
  // The routable forms come before their short forms: `glpat-[\w-]{20}` also
  // matches the first 20 characters of a routable token, and the longer
  // finding must name the merged span.
  {
    kind: 'pattern',
    id: 'gitlab-pat-routable',
    description: 'GitLab personal access token, routable format (glpat-….01.…)',
    source: 'gitleaks',
    regex: String.raw`\bglpat-[0-9a-zA-Z_\-]{27,300}\.[0-9a-z]{2}[0-9a-z]{7}\b`,
    secretGroup: 0,
    keywords: ['glpat-'],
    entropy: 4,
    before: 0,
    after: 6 + 300 + 10,
    secretBefore: 0,
  },
  gitlab('gitlab-pat', 'glpat-', String.raw`[\w\-]{20}`, 20),
  {
    kind: 'pattern',
    id: 'gitlab-runner-authentication-token-routable',
    description: 'GitLab runner authentication token, routable format (glrt-t1_….)',
    source: 'gitleaks',
    regex: String.raw`\bglrt-t\d_[0-9a-zA-Z_\-]{27,300}\.[0-9a-z]{2}[0-9a-z]{7}\b`,
    secretGroup: 0,
    keywords: ['glrt-'],
    entropy: 4,
    before: 0,
    after: 5 + 3 + 300 + 10,
    secretBefore: 0,
  },
  gitlab('gitlab-runner-authentication-token', 'glrt-', String.raw`[0-9a-zA-Z_\-]{20}`, 20),
  gitlab('gitlab-ptt', 'glptt-', String.raw`[0-9a-f]{40}`, 40),
  gitlab('gitlab-rrt', 'GR1348941', String.raw`[\w\-]{20}`, 20),
  gitlab('gitlab-deploy-token', 'gldt-', String.raw`[0-9a-zA-Z_\-]{20}`, 20),
  gitlab('gitlab-feed-token', 'glft-', String.raw`[0-9a-zA-Z_\-]{20}`, 20),
  gitlab('gitlab-incoming-mail-token', 'glimt-', String.raw`[0-9a-zA-Z_\-]{25}`, 25),
  gitlab('gitlab-kubernetes-agent-token', 'glagent-', String.raw`[0-9a-zA-Z_\-]{50}`, 50),
  gitlab('gitlab-oauth-app-secret', 'gloas-', String.raw`[0-9a-zA-Z_\-]{64}`, 64),
  gitlab('gitlab-scim-token', 'glsoat-', String.raw`[0-9a-zA-Z_\-]{20}`, 20),
  gitlab('gitlab-feature-flag-client-token', 'glffct-', String.raw`[0-9a-zA-Z_\-]{20}`, 20),
  gitlab('gitlab-cicd-job-token', 'glcbt-', String.raw`[0-9a-zA-Z]{1,5}_[0-9a-zA-Z_\-]{20}`, 26),
  {
    // Adapted: the cookie's value only, not its name.
    kind: 'pattern',
    id: 'gitlab-session-cookie',
    description: 'GitLab session cookie (_gitlab_session=…)',
    source: 'gitleaks',
    regex: String.raw`_gitlab_session=([0-9a-z]{32})`,
    secretGroup: 1,
    keywords: ['_gitlab_session='],
    entropy: 3,
    before: 0,
    after: 48,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'slack-bot-token',
    description: 'Slack bot token (xoxb-…)',
    source: 'gitleaks',
    regex: String.raw`xoxb-[0-9]{10,13}-[0-9]{10,13}[a-zA-Z0-9\-]*`,
    secretGroup: 0,
    keywords: ['xoxb'],
    entropy: 3,
    before: 0,
    after: undefined,
    run: SLACK_RUN,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'slack-legacy-bot-token',
    description: 'Slack legacy bot token (xoxb-…)',
    source: 'gitleaks',
    regex: String.raw`xoxb-[0-9]{8,14}-[a-zA-Z0-9]{18,26}`,
    secretGroup: 0,
    keywords: ['xoxb'],
    entropy: 2,
    before: 0,
    after: 46,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'slack-user-token',
    description: 'Slack user token (xoxp-…, xoxe-…)',
    source: 'gitleaks',
    regex: String.raw`xox[pe](?:-[0-9]{10,13}){3}-[a-zA-Z0-9\-]{28,34}`,
    secretGroup: 0,
    keywords: ['xoxp-', 'xoxe-'],
    entropy: 2,
    before: 0,
    after: 81,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'slack-app-token',
    description: 'Slack app-level token (xapp-…)',
    source: 'gitleaks',
    regex: String.raw`(?i)xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+`,
    secretGroup: 0,
    keywords: ['xapp'],
    entropy: 2,
    before: 0,
    after: undefined,
    run: SLACK_RUN,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'slack-legacy-workspace-token',
    description: 'Slack legacy workspace token (xoxa-…, xoxr-…)',
    source: 'gitleaks',
    regex: String.raw`xox[ar]-(?:\d-)?[0-9a-zA-Z]{8,48}`,
    secretGroup: 0,
    keywords: ['xoxa', 'xoxr'],
    entropy: 2,
    before: 0,
    after: 55,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'slack-legacy-token',
    description: 'Slack legacy token (xoxo-…, xoxs-…)',
    source: 'gitleaks',
    regex: String.raw`xox[os]-\d+-\d+-\d+-[a-fA-F\d]+`,
    secretGroup: 0,
    keywords: ['xoxo', 'xoxs'],
    entropy: 2,
    before: 0,
    after: undefined,
    run: SLACK_RUN,
    secretBefore: 0,
  },
  {
    // Adapted: gitleaks writes `xoxe.xox[bp]` with an unescaped `.`, which
    // matches any character where its keywords require a dot; escaped here.
    kind: 'pattern',
    id: 'slack-config-access-token',
    description: 'Slack configuration access token (xoxe.xoxb-…, xoxe.xoxp-…)',
    source: 'gitleaks',
    regex: String.raw`(?i)xoxe\.xox[bp]-\d-[A-Z0-9]{163,166}`,
    secretGroup: 0,
    keywords: ['xoxe.xoxb-', 'xoxe.xoxp-'],
    entropy: 2,
    before: 0,
    after: 10 + 2 + 166,
    secretBefore: 0,
  },
  {
    kind: 'pattern',
    id: 'slack-config-refresh-token',
    description: 'Slack configuration refresh token (xoxe-…)',
    source: 'gitleaks',
    regex: String.raw`(?i)xoxe-\d-[A-Z0-9]{146}`,
    secretGroup: 0,
    keywords: ['xoxe-'],
    entropy: 2,
    before: 0,
    after: 5 + 2 + 146,
    secretBefore: 0,
  },
  {
    // Adapted: the dots of hooks.slack.com escaped (as above), and only the
    // path is redacted, so the reader still sees it was a Slack webhook.
    kind: 'pattern',
    id: 'slack-webhook-url',
    description: 'Slack incoming webhook URL (hooks.slack.com/services/…)',
    source: 'gitleaks',
    regex: String.raw`(?:https?://)?hooks\.slack\.com/((?:services|workflows|triggers)/[A-Za-z0-9+/]{43,56})`,
    secretGroup: 1,
    keywords: ['hooks.slack.com'],
    before: 8,
    after: 15 + 1 + 10 + 56,
    secretBefore: 0,
  },
  {
    // Adapted: trailing context (header, 1).
    kind: 'pattern',
    id: 'stripe-access-token',
    description: 'Stripe secret or restricted key (sk_live_…, rk_live_…, sk_test_…)',
    source: 'gitleaks',
    regex: String.raw`\b((?:sk|rk)_(?:test|live|prod)_[a-zA-Z0-9]{10,99})(?:[^a-zA-Z0-9]|$)`,
    secretGroup: 1,
    keywords: ['sk_test', 'sk_live', 'sk_prod', 'rk_test', 'rk_live', 'rk_prod'],
    entropy: 2,
    before: 0,
    after: 8 + 99 + 1,
    secretBefore: 0,
  },
  {
    // Adapted: trailing context (header, 1). The keyword is the base64 of
    // "OpenAI" in the middle of the key, so the key starts up to 85
    // characters before it.
    kind: 'pattern',
    id: 'openai-api-key',
    description: 'OpenAI API key (sk-proj-…, sk-svcacct-…, sk-admin-…, legacy sk-…T3BlbkFJ…)',
    source: 'gitleaks',
    regex: String.raw`\b(sk-(?:proj|svcacct|admin)-(?:[A-Za-z0-9_\-]{74}|[A-Za-z0-9_\-]{58})T3BlbkFJ(?:[A-Za-z0-9_\-]{74}|[A-Za-z0-9_\-]{58})\b|sk-[a-zA-Z0-9]{20}T3BlbkFJ[a-zA-Z0-9]{20})(?:[^A-Za-z0-9_\-]|$)`,
    secretGroup: 1,
    keywords: ['t3blbkfj'],
    entropy: 3,
    before: 3 + 8 + 74,
    after: 8 + 74 + 1,
    secretBefore: 3 + 8 + 74,
  },
  {
    // Adapted: trailing context (header, 1).
    kind: 'pattern',
    id: 'anthropic-api-key',
    description: 'Anthropic API key (sk-ant-api03-…)',
    source: 'gitleaks',
    regex: String.raw`\b(sk-ant-api03-[a-zA-Z0-9_\-]{93}AA)(?:[^a-zA-Z0-9_\-]|$)`,
    secretGroup: 1,
    keywords: ['sk-ant-api03'],
    before: 0,
    after: 14 + 93 + 2 + 1,
    secretBefore: 0,
  },
  {
    // Adapted: trailing context (header, 1).
    kind: 'pattern',
    id: 'anthropic-admin-api-key',
    description: 'Anthropic Admin API key (sk-ant-admin01-…)',
    source: 'gitleaks',
    regex: String.raw`\b(sk-ant-admin01-[a-zA-Z0-9_\-]{93}AA)(?:[^a-zA-Z0-9_\-]|$)`,
    secretGroup: 1,
    keywords: ['sk-ant-admin01'],
    before: 0,
    after: 15 + 93 + 2 + 1,
    secretBefore: 0,
  },
  {
    // Ours: gitleaks has no rule for a password in a URL (its curl-auth-user
    // reads `curl -u`). The placeholder allowlist is adapted from that rule's.
    kind: 'url',
    id: 'url-password',
    description:
      'password in a URL, any scheme (postgres://user:pass@host, mysql, mongodb+srv, redis, amqp, https…); the password only',
    source: 'portcullis',
    keywords: ['://'],
    secretBefore: 0,
  },
  {
    // gitleaks' generic-api-key, run as code (generic.ts, which lists how it
    // is adapted): the RE2 pattern costs about a microsecond a character on
    // re2js, and structuredContent needs the same test on a property name.
    kind: 'generic',
    id: 'generic-api-key',
    description:
      'high-entropy value assigned to a secret-sounding name (secret, token, password, credential, auth, api_key, access_key, private_key…)',
    source: 'gitleaks',
    keywords: ['secret', 'token', 'passw', 'credential', 'creds', 'auth', 'key'],
    secretBefore: 0,
  },
];

/**
 * gitleaks' global allowlist, applied to every rule's secret. Adapted:
 * gitleaks writes the first as `(?i)^true|false|null$`, which by precedence
 * allows any secret containing "false"; anchored whole here.
 */
export const GLOBAL_ALLOW: readonly string[] = [
  String.raw`(?i)^(?:true|false|null)$`,
  String.raw`^(?i:a+|b+|c+|d+|e+|f+|g+|h+|i+|j+|k+|l+|m+|n+|o+|p+|q+|r+|s+|t+|u+|v+|w+|x+|y+|z+|\*+|\.+)$`,
  String.raw`^\$(?:\d+|{\d+})$`,
  String.raw`^\$(?:[A-Z_]+|[a-z_]+)$`,
  String.raw`^\${(?:[A-Z_]+|[a-z_]+)}$`,
  String.raw`^\{\{[ \t]*[\w ().|]+[ \t]*}}$`,
  String.raw`^\$\{\{[ \t]*(?:(?:env|github|secrets|vars)(?:\.[A-Za-z]\w+)+[\w "'&./=|]*)[ \t]*}}$`,
  String.raw`^%(?:[A-Z_]+|[a-z_]+)%$`,
  String.raw`^%[+\-# 0]?[bcdeEfFgGoOpqstTUvxX]$`,
  String.raw`^\{\d{0,2}}$`,
  String.raw`^@(?:[A-Z_]+|[a-z_]+)@$`,
  String.raw`^/Users/(?i)[a-z0-9]+/[\w .-/]+$`,
  String.raw`^/(?:bin|etc|home|opt|tmp|usr|var)/[\w ./-]+$`,
  // gitleaks' global stopwords (a secret containing one is not a secret).
  String.raw`(?i)014df517-39d1-4453-b7b3-9930c563627c`,
  String.raw`(?i)abcdefghijklmnopqrstuvwxyz`,
  // Ours (header, 3).
  'EXAMPLE',
];
