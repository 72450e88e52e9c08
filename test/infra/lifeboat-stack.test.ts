// Synth tests of the whole Google Cloud stack (offline: Testing.synth).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Testing } from 'cdktf';
import { beforeAll, describe, expect, it } from 'vitest';
import { ValidationError } from '../../core/errors.ts';
import {
  CLAIM_CHECK_RETENTION_DAYS,
  REQUIRED_APIS,
  SERVICE_ACCOUNTS,
  checkStackInputs,
  dnsRecordType,
  parentDnsName,
} from '../../infra/lifeboat-stack.ts';
import { LOG_METRICS } from '../../infra/observability.ts';
import { fixtureConfig, resource, resources, synthStack, withoutYamlKey, type Synthesized, type TfJson } from './fixtures/synth.ts';

const sa = (id: string) => `\${google_service_account.sa_${id}.email}`;
const member = (id: string) => `serviceAccount:${sa(id)}`;

type Binding = { type: string; id: string; role: string; member: string; target: string; condition?: string };

/** Every IAM binding of the stack, flattened. */
function bindings(json: TfJson): Binding[] {
  const out: Binding[] = [];
  for (const [type, byId] of Object.entries(json.resource)) {
    if (!/_iam_(member|binding|policy)$/.test(type)) continue;
    for (const [id, r] of Object.entries(byId)) {
      const target = String(r.topic ?? r.subscription ?? r.bucket ?? r.managed_zone ?? r.secret_id ?? r.service_account_id ?? r.name ?? r.project ?? '');
      const cond = r.condition as { expression?: string } | undefined;
      out.push({ type, id, role: String(r.role), member: String(r.member), target, condition: cond?.expression });
    }
  }
  return out;
}

let main: Synthesized;
let variant: Synthesized;
const HOOK_URL = 'https://hooks.example.com/lifeboat?token=hunter2-very-secret';

beforeAll(() => {
  main = synthStack();
  variant = synthStack({
    config: fixtureConfig(
      {
        LIFEBOAT_FAILOVER_HOOK_URL: HOOK_URL,
        LIFEBOAT_TARGET_TIER: 'db-custom-1-3840',
        LIFEBOAT_FUNCTIONS_APPLY_CONCURRENCY: '3',
        LIFEBOAT_PROBE_SCHEDULE_INTERVAL_SECONDS: '120',
      },
      withoutYamlKey('cloudTarget'),
    ),
    dnsZone: 'existing',
    alertEmail: 'ops@example.com',
    stateBucket: 'lifeboat-test-state',
    functionsSource: { kind: 'uploaded-object', object: 'functions-source/prebuilt.zip' },
  });
});

describe('the stack holds every resource of the issue', () => {
  it('has each resource type, with the counts that matter', () => {
    const count = (t: string) => Object.keys(resources(main.json, t)).length;
    expect(count('google_pubsub_topic')).toBe(3);
    expect(count('google_pubsub_subscription')).toBe(3);
    expect(count('google_cloudfunctions2_function')).toBe(3);
    expect(count('google_cloud_scheduler_job')).toBe(1);
    expect(count('google_firestore_database')).toBe(1);
    expect(count('google_sql_database_instance')).toBe(1);
    expect(count('google_sql_database')).toBe(1);
    expect(count('google_sql_user')).toBe(2);
    expect(count('google_secret_manager_secret')).toBe(2);
    expect(count('google_storage_bucket')).toBe(1);
    expect(count('google_storage_bucket_object')).toBe(1);
    expect(count('google_cloud_run_v2_service')).toBe(1);
    expect(count('google_dns_managed_zone')).toBe(1);
    expect(count('google_dns_record_set')).toBe(1);
    expect(count('google_service_account')).toBe(Object.keys(SERVICE_ACCOUNTS).length);
    expect(count('google_monitoring_dashboard')).toBe(1);
    expect(count('google_monitoring_alert_policy')).toBe(1);
    expect(count('google_logging_metric')).toBe(LOG_METRICS.length);
    expect(count('random_password')).toBe(2);
    expect(Object.values(resources(main.json, 'google_project_service')).map((r) => r.service).sort()).toEqual([...REQUIRED_APIS].sort());
  });

  it('topics and subscriptions carry the configured names', () => {
    expect(Testing.toHaveResourceWithProperties(main.text, 'google_pubsub_topic', { name: 'lifeboat-changes' })).toBe(true);
    expect(Testing.toHaveResourceWithProperties(main.text, 'google_pubsub_topic', { name: 'lifeboat-dead-letters' })).toBe(true);
    expect(Testing.toHaveResourceWithProperties(main.text, 'google_pubsub_topic', { name: 'lifeboat-events' })).toBe(true);
    const dlq = resource(main.json, 'google_pubsub_subscription', 'dead_letter_subscription');
    expect(dlq.topic).toBe('${google_pubsub_topic.dead_letter_topic.id}');
    expect(dlq.push_config).toBeUndefined();
    expect(dlq.message_retention_duration).toBe('604800s');
    expect(dlq.expiration_policy).toEqual({ ttl: '' });
  });
});

describe('apply delivery: our own ordered push subscription', () => {
  it('orders, dead-letters, retries with backoff and authenticates the push with OIDC', () => {
    const s = resource(main.json, 'google_pubsub_subscription', 'apply_subscription');
    expect(s).toMatchObject({
      name: 'lifeboat-apply',
      topic: '${google_pubsub_topic.changes_topic.id}',
      enable_message_ordering: true,
      dead_letter_policy: { dead_letter_topic: '${google_pubsub_topic.dead_letter_topic.id}', max_delivery_attempts: 100 },
      retry_policy: { minimum_backoff: '10s', maximum_backoff: '600s' },
      push_config: {
        push_endpoint: '${google_cloudfunctions2_function.apply_function.service_config[0].uri}/projects/lifeboat-test-project/topics/lifeboat-changes',
        oidc_token: { service_account_email: sa('push'), audience: '${google_cloudfunctions2_function.apply_function.service_config[0].uri}' },
      },
      ack_deadline_seconds: 60,
    });
  });

  it('lets Pub/Sub dead-letter and mint the push token: its service agent has exactly those rights', () => {
    const agent = 'serviceAccount:service-${data.google_project.project_data.number}@gcp-sa-pubsub.iam.gserviceaccount.com';
    const mine = bindings(main.json).filter((b) => b.member === agent);
    expect(mine.map((b) => [b.type, b.role, b.target]).sort()).toEqual(
      [
        ['google_pubsub_subscription_iam_member', 'roles/pubsub.subscriber', '${google_pubsub_subscription.apply_subscription.name}'],
        ['google_pubsub_topic_iam_member', 'roles/pubsub.publisher', '${google_pubsub_topic.dead_letter_topic.name}'],
        ['google_service_account_iam_member', 'roles/iam.serviceAccountTokenCreator', '${google_service_account.sa_push.name}'],
      ].sort(),
    );
    expect(Testing.toHaveDataSourceWithProperties(main.text, 'google_project', { project_id: 'lifeboat-test-project' })).toBe(true);
  });
});

describe('functions (2nd gen)', () => {
  const fn = (id: string) => resource(main.json, 'google_cloudfunctions2_function', id);

  it('apply: nodejs22, one instance, one request at a time, memory and timeout from config', () => {
    expect(fn('apply_function')).toMatchObject({
      name: 'lifeboat-apply',
      location: 'europe-west1',
      build_config: {
        runtime: 'nodejs22',
        entry_point: 'lifeboatApply',
        service_account: '${google_service_account.sa_build.id}',
        source: { storage_source: { bucket: '${google_storage_bucket.bucket.name}', object: '${google_storage_bucket_object.functions_source_object.name}' } },
      },
      service_config: {
        available_memory: '512M',
        timeout_seconds: 60,
        min_instance_count: 0,
        max_instance_count: 1,
        max_instance_request_concurrency: 1,
        service_account_email: sa('apply'),
      },
    });
  });

  it('probe and status: their entry points, memory and accounts', () => {
    expect(fn('probe_function')).toMatchObject({
      build_config: { entry_point: 'lifeboatProbe' },
      service_config: { available_memory: '256M', timeout_seconds: 90, min_instance_count: 0, service_account_email: sa('probe') },
    });
    expect(fn('status_function')).toMatchObject({
      build_config: { entry_point: 'lifeboatStatus' },
      service_config: { available_memory: '256M', min_instance_count: 0, service_account_email: sa('status') },
    });
  });

  it('run with the config as LIFEBOAT_* variables and the database password from Secret Manager', () => {
    const sc = fn('apply_function').service_config as { environment_variables: Record<string, string>; secret_environment_variables: unknown[] };
    expect(sc.environment_variables).toMatchObject({
      LIFEBOAT_MODE: 'cloud',
      LIFEBOAT_PROJECT: 'lifeboat-test-project',
      LIFEBOAT_STREAM: 'main',
      LIFEBOAT_PUBSUB_CHANGES_TOPIC: 'lifeboat-changes',
      LIFEBOAT_LEASE_DOCUMENT: 'lifeboat/lease-main',
      LIFEBOAT_TARGET_INSTANCE_CONNECTION_NAME: 'lifeboat-test-project:europe-west1:lifeboat-standby',
      LIFEBOAT_STORAGE_BUCKET: 'lifeboat-test-project-lifeboat',
      LIFEBOAT_AGENT_HEARTBEAT_INTERVAL_SECONDS: '5',
      PGUSER: 'lifeboat_apply',
      PGDATABASE: 'app',
    });
    expect(sc.secret_environment_variables).toEqual([
      { key: 'PGPASSWORD', project_id: 'lifeboat-test-project', secret: '${google_secret_manager_secret.apply_db_password_secret.secret_id}', version: 'latest' },
    ]);
  });

  it('the source is the prebuilt directory, zipped as an asset and uploaded to the bucket', () => {
    const obj = resource(main.json, 'google_storage_bucket_object', 'functions_source_object');
    expect(obj.bucket).toBe('${google_storage_bucket.bucket.name}');
    expect(String(obj.name)).toMatch(/^functions-source\/lifeboat-functions-[0-9A-F]+\.zip$/);
    expect(String(obj.source)).toMatch(/^assets\/functions_source\/[0-9A-F]+\/archive\.zip$/);
  });

  it('an uploaded zip is referenced by name, and applyConcurrency sets the apply instances', () => {
    expect(resources(variant.json, 'google_storage_bucket_object')).toEqual({});
    const apply = resource(variant.json, 'google_cloudfunctions2_function', 'apply_function') as { build_config: { source: unknown }; service_config: Record<string, unknown> };
    expect(apply.build_config.source).toEqual({ storage_source: { bucket: '${google_storage_bucket.bucket.name}', object: 'functions-source/prebuilt.zip' } });
    expect(apply.service_config.max_instance_count).toBe(3);
    expect(apply.service_config.max_instance_request_concurrency).toBe(1);
  });
});

describe('scheduler', () => {
  it('calls the probe every minute with an OIDC token of its own account', () => {
    expect(resource(main.json, 'google_cloud_scheduler_job', 'probe_schedule')).toMatchObject({
      schedule: '* * * * *',
      region: 'europe-west1',
      http_target: {
        uri: '${google_cloudfunctions2_function.probe_function.service_config[0].uri}',
        http_method: 'POST',
        oidc_token: { service_account_email: sa('scheduler'), audience: '${google_cloudfunctions2_function.probe_function.service_config[0].uri}' },
      },
      retry_config: { retry_count: 0 },
    });
    expect(resource(variant.json, 'google_cloud_scheduler_job', 'probe_schedule').schedule).toBe('*/2 * * * *');
  });
});

describe('state and data', () => {
  it('Firestore in native mode, the (default) database', () => {
    expect(resource(main.json, 'google_firestore_database', 'firestore')).toMatchObject({ name: '(default)', type: 'FIRESTORE_NATIVE', location_id: 'europe-west1' });
  });

  it('Cloud SQL PostgreSQL 15: tier from config, logical decoding on, backups on, protected', () => {
    expect(resource(main.json, 'google_sql_database_instance', 'cloud_sql')).toMatchObject({
      name: 'lifeboat-standby',
      database_version: 'POSTGRES_15',
      region: 'europe-west1',
      deletion_protection: true,
      settings: {
        tier: 'db-f1-micro',
        edition: 'ENTERPRISE',
        database_flags: [{ name: 'cloudsql.logical_decoding', value: 'on' }],
        backup_configuration: { enabled: true },
        ip_configuration: { ipv4_enabled: true, ssl_mode: 'ENCRYPTED_ONLY' },
      },
    });
    expect((resource(variant.json, 'google_sql_database_instance', 'cloud_sql').settings as { tier: string }).tier).toBe('db-custom-1-3840');
    expect(resource(main.json, 'google_sql_database', 'database').name).toBe('app');
  });

  it('the apply and app roles get generated passwords, kept in Secret Manager', () => {
    expect(resource(main.json, 'google_sql_user', 'apply_db_user')).toMatchObject({ name: 'lifeboat_apply', password: '${random_password.apply_db_password.result}' });
    expect(resource(main.json, 'google_sql_user', 'app_db_user')).toMatchObject({ name: 'app', password: '${random_password.app_db_password.result}' });
    expect(resource(main.json, 'google_secret_manager_secret_version', 'apply_db_password_secret_version').secret_data).toBe('${random_password.apply_db_password.result}');
    expect(resource(main.json, 'random_password', 'apply_db_password')).toMatchObject({ length: 32, special: false });
    expect((main.json.terraform.required_providers as Record<string, unknown>).random).toEqual({ source: 'hashicorp/random', version: '~> 3.6' });
  });

  it('no password or secret appears in clear text in the synthesized JSON', () => {
    for (const { json, text } of [main, variant]) {
      const secretFields: unknown[] = [];
      const walk = (v: unknown, key = '') => {
        if (Array.isArray(v)) v.forEach((x) => walk(x, key));
        else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, k);
        else if (/password|secret_data/.test(key)) secretFields.push(v);
      };
      walk(json.resource);
      expect(secretFields.length).toBeGreaterThan(0);
      for (const v of secretFields) expect(String(v)).toMatch(/^\$\{(random_password\.[a-z_]+\.result|var\.[a-z_]+)\}$/);
      expect(text).not.toContain('hunter2');
    }
    // The hook URL (it may carry a token) arrives as a sensitive variable.
    expect(variant.json.variable?.failover_hook_url).toMatchObject({ sensitive: true, type: 'string' });
    expect(resource(variant.json, 'google_secret_manager_secret_version', 'failover_hook_url_secret_version').secret_data).toBe('${var.failover_hook_url}');
    const probe = resource(variant.json, 'google_cloudfunctions2_function', 'probe_function').service_config as { secret_environment_variables: { key: string }[] };
    expect(probe.secret_environment_variables.map((s) => s.key)).toEqual(['PGPASSWORD', 'LIFEBOAT_FAILOVER_HOOK_URL']);
  });

  it('the bucket deletes old claim checks, keeps reports, and is private', () => {
    const b = resource(main.json, 'google_storage_bucket', 'bucket') as { lifecycle_rule: { action: { type: string }; condition: { age?: number; matches_prefix?: string[] } }[] };
    expect(b).toMatchObject({ name: 'lifeboat-test-project-lifeboat', location: 'EUROPE-WEST1', uniform_bucket_level_access: true, public_access_prevention: 'enforced' });
    const deletes = b.lifecycle_rule.filter((r) => r.action.type === 'Delete');
    expect(deletes).toEqual([{ action: { type: 'Delete' }, condition: { age: CLAIM_CHECK_RETENTION_DAYS, matches_prefix: ['claim-check/'] } }]);
    for (const r of deletes) for (const p of r.condition.matches_prefix ?? ['']) expect('reports/x.json'.startsWith(p)).toBe(false);
  });
});

describe('traffic', () => {
  it('Cloud Run: min instances 0, the configured image, Cloud SQL attached, and failover-owned fields ignored', () => {
    const run = resource(main.json, 'google_cloud_run_v2_service', 'app_service');
    expect(run).toMatchObject({
      name: 'lifeboat-app',
      location: 'europe-west1',
      template: {
        scaling: { min_instance_count: 0 },
        service_account: sa('app'),
        volumes: [{ name: 'cloudsql', cloud_sql_instance: { instances: ['${google_sql_database_instance.cloud_sql.connection_name}'] } }],
        containers: [{ image: 'europe-west1-docker.pkg.dev/lifeboat-test-project/apps/app:1.0.0', ports: { container_port: 8080 }, volume_mounts: [{ name: 'cloudsql', mount_path: '/cloudsql' }] }],
      },
    });
    expect((run.lifecycle as { ignore_changes: string[] }).ignore_changes).toContain('template[0].scaling[0].min_instance_count');
    const env = ((run.template as { containers: { env: { name: string; value?: string; value_source?: unknown }[] }[] }).containers[0]?.env ?? []);
    expect(env.find((e) => e.name === 'PGPASSWORD')).toEqual({ name: 'PGPASSWORD', value_source: { secret_key_ref: { secret: '${google_secret_manager_secret.app_db_password_secret.secret_id}', version: 'latest' } } });
  });

  it('Cloud DNS: a zone and the record with a low TTL, whose data failover owns', () => {
    expect(resource(main.json, 'google_dns_managed_zone', 'dns_zone')).toMatchObject({ name: 'example-com', dns_name: 'example.com.', visibility: 'public' });
    expect(resource(main.json, 'google_dns_record_set', 'app_record')).toMatchObject({
      managed_zone: '${google_dns_managed_zone.dns_zone.name}',
      name: 'app.example.com.',
      type: 'A',
      ttl: 30,
      rrdatas: ['203.0.113.10'],
      lifecycle: { ignore_changes: ['rrdatas'] },
    });
  });

  it('an existing zone is looked up by name; without dns.cloudTarget a domain mapping provides it', () => {
    expect(resources(variant.json, 'google_dns_managed_zone')).toEqual({});
    expect(variant.json.data?.google_dns_managed_zone?.dns_zone).toMatchObject({ name: 'example-com' });
    expect(resource(variant.json, 'google_dns_record_set', 'app_record').managed_zone).toBe('${data.google_dns_managed_zone.dns_zone.name}');
    expect(resource(variant.json, 'google_cloud_run_domain_mapping', 'app_domain_mapping')).toMatchObject({
      name: 'app.example.com',
      location: 'europe-west1',
      spec: { route_name: '${google_cloud_run_v2_service.app_service.name}' },
    });
    const env = (resource(variant.json, 'google_cloudfunctions2_function', 'probe_function').service_config as { environment_variables: Record<string, string> }).environment_variables;
    expect(env.LIFEBOAT_DNS_CLOUD_TARGET).toBe('${google_cloud_run_domain_mapping.app_domain_mapping.status[0].resource_records[0].rrdata}');
  });
});

describe('identity: least privilege', () => {
  it('no basic roles anywhere and no project-wide DNS rights', () => {
    const all = bindings(main.json).concat(bindings(variant.json));
    expect(all.length).toBeGreaterThan(30);
    for (const b of all) expect(['roles/owner', 'roles/editor', 'roles/viewer']).not.toContain(b.role);
    for (const b of all.filter((x) => x.type === 'google_project_iam_member')) expect(b.role).not.toMatch(/^roles\/dns\./);
    expect(Object.keys(resources(main.json, 'google_project_iam_binding'))).toEqual([]);
    expect(Object.keys(resources(main.json, 'google_project_iam_policy'))).toEqual([]);
  });

  it('project-level bindings are conditioned on the one database or instance, except the build account', () => {
    const project = bindings(main.json).filter((b) => b.type === 'google_project_iam_member');
    const unconditioned = project.filter((b) => !b.condition).map((b) => `${b.member} ${b.role}`);
    expect(unconditioned.sort()).toEqual([`${member('build')} roles/artifactregistry.writer`, `${member('build')} roles/logging.logWriter`].sort());
    for (const b of project.filter((x) => x.condition)) {
      expect(b.condition).toMatch(/^resource\.name == "projects\/lifeboat-test-project\/(databases\/\(default\)|instances\/lifeboat-standby)"$/);
    }
  });

  it('only the probe may change the DNS zone, and only on the zone', () => {
    const dns = bindings(main.json).filter((b) => b.role.startsWith('roles/dns.'));
    expect(dns).toEqual([
      { type: 'google_dns_managed_zone_iam_member', id: 'probe_dns_zone_admin', role: 'roles/dns.admin', member: member('probe'), target: '${google_dns_managed_zone.dns_zone.name}', condition: undefined },
    ]);
  });

  it.each([
    ['agent publishes to the changes topic only among topics', 'agent', 'roles/pubsub.publisher', '${google_pubsub_topic.changes_topic.name}'],
    ['agent uses Firestore', 'agent', 'roles/datastore.user', 'lifeboat-test-project'],
    ['agent writes claim checks and reports', 'agent', 'roles/storage.objectCreator', '${google_storage_bucket.bucket.name}', 2],
    ['apply connects to Cloud SQL', 'apply', 'roles/cloudsql.client', 'lifeboat-test-project'],
    ['apply reads its password', 'apply', 'roles/secretmanager.secretAccessor', '${google_secret_manager_secret.apply_db_password_secret.id}'],
    ['apply reads claim checks', 'apply', 'roles/storage.objectViewer', '${google_storage_bucket.bucket.name}'],
    ['push invokes apply', 'push', 'roles/run.invoker', '${google_cloudfunctions2_function.apply_function.name}'],
    ['scheduler invokes probe', 'scheduler', 'roles/run.invoker', '${google_cloudfunctions2_function.probe_function.name}'],
    ['probe holds the lease', 'probe', 'roles/datastore.user', 'lifeboat-test-project'],
    ['probe scales the app on Cloud Run', 'probe', 'roles/run.developer', '${google_cloud_run_v2_service.app_service.name}'],
    ['probe deploys Cloud Run as the app account', 'probe', 'roles/iam.serviceAccountUser', '${google_service_account.sa_app.name}'],
    ['probe publishes events', 'probe', 'roles/pubsub.publisher', '${google_pubsub_topic.events_topic.name}'],
    ['status reads Firestore', 'status', 'roles/datastore.viewer', 'lifeboat-test-project'],
    ['app reaches Cloud SQL', 'app', 'roles/cloudsql.client', 'lifeboat-test-project'],
    ['app reads its password', 'app', 'roles/secretmanager.secretAccessor', '${google_secret_manager_secret.app_db_password_secret.id}'],
    ['build reads the function source', 'build', 'roles/storage.objectViewer', '${google_storage_bucket.bucket.name}'],
  ])('%s', (_what, who, role, target, count = 1) => {
    expect(bindings(main.json).filter((b) => b.member === member(who) && b.role === role && b.target === target)).toHaveLength(count);
  });

  it('the agent publishes to no other topic than changes and events, and may not invoke functions', () => {
    const agent = bindings(main.json).filter((b) => b.member === member('agent'));
    expect(agent.filter((b) => b.type === 'google_pubsub_topic_iam_member').map((b) => b.target).sort()).toEqual(
      ['${google_pubsub_topic.changes_topic.name}', '${google_pubsub_topic.events_topic.name}'].sort(),
    );
    expect(agent.some((b) => b.role === 'roles/run.invoker')).toBe(false);
  });

  it('object rights are limited to a prefix of the bucket', () => {
    for (const b of bindings(main.json).filter((x) => x.type === 'google_storage_bucket_iam_member')) {
      expect(b.condition).toMatch(/^resource\.name\.startsWith\("projects\/_\/buckets\/lifeboat-test-project-lifeboat\/objects\/[a-z-]+\/"\)$/);
    }
  });

  it('each function is invokable only by its caller; the app is public', () => {
    const invokers = bindings(main.json).filter((b) => b.role === 'roles/run.invoker');
    expect(invokers.map((b) => `${b.target} ${b.member}`).sort()).toEqual(
      [
        `\${google_cloudfunctions2_function.apply_function.name} ${member('push')}`,
        `\${google_cloudfunctions2_function.probe_function.name} ${member('scheduler')}`,
        '${google_cloud_run_v2_service.app_service.name} allUsers',
      ].sort(),
    );
  });
});

describe('observability', () => {
  it('the dashboard shows lag, rows and batches, errors, halted stream, probes, lease and failovers', () => {
    const dash = JSON.parse(String(resource(main.json, 'google_monitoring_dashboard', 'dashboard').dashboard_json)) as {
      mosaicLayout: { tiles: { widget: { title: string; xyChart: { dataSets: { timeSeriesQuery: { prometheusQuery: string } }[] } } }[] };
    };
    const titles = dash.mosaicLayout.tiles.map((t) => t.widget.title);
    for (const want of [/lag/i, /rows and batches/i, /apply errors/i, /halted/i, /probe results/i, /lease holder and epoch/i, /failovers/i, /dead letters/i]) {
      expect(titles.some((t) => want.test(t))).toBe(true);
    }
    for (const t of dash.mosaicLayout.tiles) expect(t.widget.xyChart.dataSets[0]?.timeSeriesQuery.prometheusQuery).toBeTruthy();
  });

  it('one alert condition covers lag, halted stream, failover, probe failures and dead letters', () => {
    const policy = resource(main.json, 'google_monitoring_alert_policy', 'alert_policy') as {
      conditions: { condition_prometheus_query_language: { query: string } }[];
      documentation: { subject: string };
      notification_channels: string[];
    };
    expect(policy.conditions).toHaveLength(1);
    const q = policy.conditions[0]?.condition_prometheus_query_language.query ?? '';
    for (const signal of ['lag', 'stalled', 'halted', 'failover', 'probe-failures', 'dead-letters']) expect(q).toContain(`"signal", "${signal}"`);
    expect(q).toContain('lifeboat_replication_lag_seconds_sum[5m])) / sum(rate(logging_googleapis_com:user_lifeboat_replication_lag_seconds_count[5m])) > 120');
    expect(q).toContain('subscription_id="lifeboat-dead-letters"');
    // Escaped so Terraform leaves Monitoring's own ${…} alone.
    expect(policy.documentation.subject).toBe('Lifeboat: $${metric.label.signal}');
    expect(policy.notification_channels).toEqual([]);
    const withMail = resource(variant.json, 'google_monitoring_alert_policy', 'alert_policy') as { notification_channels: string[] };
    expect(withMail.notification_channels).toEqual(['${google_monitoring_notification_channel.alert_email.id}']);
    expect(resource(variant.json, 'google_monitoring_notification_channel', 'alert_email')).toMatchObject({ type: 'email', labels: { email_address: 'ops@example.com' } });
  });

  it('log-based metrics read the fields the functions log', () => {
    const lag = resource(main.json, 'google_logging_metric', 'metric_lifeboat_replication_lag_seconds');
    expect(lag).toMatchObject({
      name: 'lifeboat_replication_lag_seconds',
      value_extractor: 'EXTRACT(jsonPayload.lagSeconds)',
      metric_descriptor: { metric_kind: 'DELTA', value_type: 'DISTRIBUTION', unit: 's' },
    });
    expect(String(lag.filter)).toContain('jsonPayload.event="batch-applied"');
    const probes = resource(main.json, 'google_logging_metric', 'metric_lifeboat_probe_results');
    expect(probes).toMatchObject({ metric_descriptor: { value_type: 'INT64' }, label_extractors: { result: 'EXTRACT(jsonPayload.result)' } });
  });
});

describe('outputs give the agent and the CLI everything they need', () => {
  it('topic, project, lease document, bucket, function URLs, DNS name, service accounts', () => {
    const o = main.json.output;
    expect(o.project?.value).toBe('lifeboat-test-project');
    expect(o.changes_topic?.value).toBe('${google_pubsub_topic.changes_topic.id}');
    expect(o.lease_document?.value).toBe('lifeboat/lease-main');
    expect(o.bucket?.value).toBe('${google_storage_bucket.bucket.name}');
    expect(o.apply_url?.value).toBe('${google_cloudfunctions2_function.apply_function.service_config[0].uri}');
    expect(o.probe_url?.value).toBe('${google_cloudfunctions2_function.probe_function.service_config[0].uri}');
    expect(o.status_url?.value).toBe('${google_cloudfunctions2_function.status_function.service_config[0].uri}');
    expect(o.dns_record_name?.value).toBe('app.example.com.');
    expect(o.cloud_sql_instance_connection_name?.value).toBe('${google_sql_database_instance.cloud_sql.connection_name}');
    expect(Object.keys(o.service_accounts?.value as object).sort()).toEqual(Object.keys(SERVICE_ACCOUNTS).sort());
    expect(o.agent_environment?.value).toMatchObject({ LIFEBOAT_MODE: 'cloud', LIFEBOAT_PUBSUB_CHANGES_TOPIC: 'lifeboat-changes' });
  });

  it('state goes to the given GCS bucket', () => {
    expect(variant.json.terraform.backend).toEqual({ gcs: { bucket: 'lifeboat-test-state', prefix: 'lifeboat/main' } });
  });
});

describe('inputs the stack refuses, with every problem named', () => {
  const problemsOf = (fn: () => unknown): string => {
    try {
      fn();
    } catch (e) {
      expect(e).toBeInstanceOf(ValidationError);
      return (e as Error).message;
    }
    throw new Error('expected a ValidationError');
  };

  it('local mode', () => {
    expect(problemsOf(() => checkStackInputs(fixtureConfig({ LIFEBOAT_MODE: 'local' })))).toContain("mode is 'local'");
  });

  it('an instance in another project or region, and DNS targets of different types, all at once', () => {
    const msg = problemsOf(() =>
      checkStackInputs(
        fixtureConfig({
          LIFEBOAT_TARGET_INSTANCE_CONNECTION_NAME: 'other-project:us-east1:db',
          LIFEBOAT_DNS_CLOUD_TARGET: 'ghs.googlehosted.com.',
        }),
      ),
    );
    expect(msg).toContain("names project 'other-project'");
    expect(msg).toContain("names region 'us-east1'");
    expect(msg).toContain('needs a CNAME record but dns.localTarget needs A');
  });

  it('an empty claim-check prefix (its lifecycle rule would delete everything)', () => {
    const cfg = fixtureConfig({}, (t) => t.replace('  bucket: lifeboat-test-project-lifeboat\n', '  bucket: lifeboat-test-project-lifeboat\n  claimCheckPrefix: ""\n'));
    expect(cfg.storage.claimCheckPrefix).toBe('');
    expect(problemsOf(() => checkStackInputs(cfg))).toContain('storage.claimCheckPrefix is empty');
  });

  it('a record outside the zone', () => {
    expect(problemsOf(() => checkStackInputs(fixtureConfig(), { dnsZoneDnsName: 'example.org.' }))).toContain("is not inside the zone's DNS name");
  });

  it('record types and parent names', () => {
    expect(dnsRecordType('203.0.113.10')).toBe('A');
    expect(dnsRecordType('2001:db8::1')).toBe('AAAA');
    expect(dnsRecordType('home.example.net.')).toBe('CNAME');
    expect(parentDnsName('app.example.com.')).toBe('example.com.');
  });
});

describe('provider resources are imported one file each', () => {
  it('no infra module imports the @cdktf/provider-google barrel', () => {
    const dir = new URL('../../infra/', import.meta.url).pathname;
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.ts'))) {
      const src = readFileSync(join(dir, f), 'utf8');
      expect(src).not.toMatch(/from '@cdktf\/provider-google'/);
      for (const m of src.matchAll(/from '(@cdktf\/provider-google[^']*)'/g)) expect(m[1]).toMatch(/^@cdktf\/provider-google\/lib\/[a-z0-9-]+\/index\.js$/);
    }
  });
});
