using System.Reflection;
using System.Text.Json.Serialization;
using JasperFx;
using JasperFx.Events.Projections;
using Marten;
using MassTransit;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;
using SEmigrate.Activities;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.MemoryServer;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Settings;
using SEmigrate.Workers.Steps;
using SEmigrate.Workers.Trust;
using SEmigrate.Workflows;
using Temporalio.Extensions.Hosting;

namespace SEmigrate.Workers.Roles;

/// <summary>What each process is made of. A host worker runs one or more of the roles source, main and
/// sub, and takes every step of each on its one host queue (embedded engine and Temporal alike); main
/// and sub run a memory server; the orchestrator (`migrate`, `demo`, the tests) runs the embedded
/// engine, watches transfer heartbeats and appends the audit trail to Marten.</summary>
public static class RoleRegistration
{
    public static readonly string[] Roles = ["source", "main", "sub", "orchestrator"];

    /// <summary>The roles of `--role`: one, or several host roles separated by commas; null (with why) if not.</summary>
    public static IReadOnlySet<string>? Parse(string value, out string? problem)
    {
        var roles = value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal);
        problem = roles.FirstOrDefault(r => !Roles.Contains(r)) is { } unknown ? $"--role {unknown}: one of {string.Join(", ", Roles)} (several host roles: source,main)"
            : roles.Count == 0 ? "--role: name a role"
            : roles.Contains("orchestrator") && roles.Count > 1 ? "--role orchestrator runs in a process of its own"
            : null;
        return problem is null ? roles : null;
    }

    public static IHostApplicationBuilder AddHostRoles(this IHostApplicationBuilder builder, IReadOnlySet<string> roles, HostContext context)
    {
        if (roles.Contains("orchestrator"))
        {
            // The long-lived orchestrator also finishes what a `migrate` (or another orchestrator) left,
            // and runs the embedded engine's drain schedules.
            builder.Services.AddHostedService<MigrationResumer>();
            builder.Services.AddSingleton<ScheduleRunner>();
            builder.Services.AddHostedService(sp => sp.GetRequiredService<ScheduleRunner>());
            return builder.AddOrchestrator(StepPolicies.Default);
        }
        var (host, stateDirectory) = (context.Host, context.StateDirectory);
        var (source, main, pages) = (roles.Contains("source"), roles.Contains("main"), roles.Contains("main") || roles.Contains("sub"));
        builder.Services.AddSingleton(context);
        builder.Services.AddSingleton(new HostRoles([.. roles.Order(StringComparer.Ordinal)]));
        builder.Services.AddHostedService<HostReporter>();
        // Every host has its identity; a main host's data keys are wrapped for it.
        var keys = HostIdentity.Ensure(stateDirectory, host);
        builder.Services.AddSingleton(sp => new OperatorTrust(sp.GetRequiredService<IOptions<TrustOptions>>().Value.PublicKey));
        builder.Services.AddSingleton<StepGuard>();
        builder.AddPagePath($"{string.Join(",", roles.Order(StringComparer.Ordinal))} worker {host}");
        if (pages)
        {
            // The memory server's store; at the main host the VM's pager reads its share from it directly.
            builder.Services.AddSingleton<IPageStore>(sp => sp.GetRequiredService<IOptions<MemoryServerOptions>>().Value is var o && o.StoreFolder is { Length: > 0 } folder
                ? new FilePageStore(folder, o.CapacityPages) : new InMemoryPageStore(o.CapacityPages));
            builder.Services.AddSingleton<MemoryServerWorker>();
            builder.Services.AddHostedService(sp => sp.GetRequiredService<MemoryServerWorker>());
            builder.Services.AddSingleton<VmCapabilities>();
            // Only a main host hands out its key at StartPaging (the data key is wrapped for it).
            builder.Services.AddSingleton(sp => new PagingActivities(sp.GetRequiredService<HostContext>(), sp.GetRequiredService<PageClient>(), sp.GetRequiredService<IPageStore>(),
                sp.GetRequiredService<StepGuard>(), sp.GetRequiredService<VmCapabilities>(), keys, isMain: main, sp.GetService<TakeOvers>()));
        }
        if (source)
        {
            builder.Services.AddSingleton<SourceActivities>();
        }
        builder.Services.AddSingleton(keys); // capabilities are wrapped for it; at a main host, the data key too
        builder.Services.AddSingleton(new EventSigner(EventSigner.HostPrefix + host, data => keys.Sign(data))); // and the events it raises are signed with it
        if (main)
        {
            MainHostActivities.EraseClearCopies(stateDirectory); // left by a worker that died starting a guest
            builder.Services.AddSingleton<MainHostVms>();
            builder.Services.AddSingleton<TakeOvers>();
            builder.Services.AddSingleton<MainHostActivities>();
            builder.Services.AddHostedService<PagingReporter>();
        }
        if (Temporal(builder) is { } temporal)
        {
            // The same activity classes, all of this host's roles on its one task queue, for migrations that Temporal drives.
            var worker = builder.Services.AddHostedTemporalWorker(temporal.Address!, temporal.Namespace, StepQueues.Host(host))
                .ConfigureOptions(o => o.ClientOptions = temporal.ConnectOptions());
            if (source)
            {
                worker.AddSingletonActivities<SourceActivities>();
            }
            if (pages)
            {
                worker.AddSingletonActivities<PagingActivities>();
            }
            if (main)
            {
                worker.AddSingletonActivities<MainHostActivities>();
            }
        }
        builder.Services.AddSingleton<RunningSteps>();
        // The step consumers of this host's roles, all on its one step queue.
        Type[] steps =
        [
            .. source ? [typeof(SourceStepsConsumer)] : Array.Empty<Type>(),
            .. pages ? [typeof(PagingStepsConsumer)] : Array.Empty<Type>(),
            .. main ? [typeof(MainHostStepsConsumer)] : Array.Empty<Type>(),
            .. source || main ? [typeof(DigestStepsConsumer)] : Array.Empty<Type>(),
        ];
        return builder.AddMessaging(StepQueues.BusEndpoint(host),
            x =>
            {
                foreach (var consumer in steps)
                {
                    x.AddConsumer(consumer);
                }
                x.AddConsumer<CancelStepsConsumer>();
            },
            (bus, cfg) =>
            {
                cfg.ReceiveEndpoint(StepQueues.Host(host), e =>
                {
                    // Transfers to every destination run at once at the source.
                    e.PrefetchCount = 16;
                    e.ConfigureConsumeTopology = false; // steps are sent to this queue, never published
                    foreach (var consumer in steps)
                    {
                        e.ConfigureConsumer(bus, consumer);
                    }
                });
                // Beside the step queue, not behind the steps waiting in it: a cancel reaches this process at once.
                cfg.ReceiveEndpoint(StepQueues.CancelEndpoint(host), e =>
                {
                    (e.Durable, e.AutoDelete, e.Exclusive) = (false, true, true); // this process's own
                    // Cancels come through the host's own entry, which orchestrators bind from CancelSteps'
                    // exchange (HostRoutes): the host binds nothing shared.
                    e.ConfigureConsumeTopology = false;
                    e.Bind(StepQueues.CancelEntry(host));
                    e.ConfigureConsumer<CancelStepsConsumer>(bus);
                });
            });
    }

    /// <summary>The embedded engine and the auditor, in the process that runs migrations; with Temporal
    /// configured, also the Temporal worker of the migration workflow and its audit activity.</summary>
    public static IHostApplicationBuilder AddOrchestrator(this IHostApplicationBuilder builder, StepPolicies policies)
    {
        if (Temporal(builder) is { } temporal)
        {
            builder.Services.AddHostedTemporalWorker(temporal.Address!, temporal.Namespace, MigrationWorkflow.OrchestratorQueue)
                .ConfigureOptions(o => o.ClientOptions = temporal.ConnectOptions())
                .AddWorkflow<MigrationWorkflow>()
                .AddWorkflow<DrainWorkflow>()
                .AddSingletonActivities<AuditActivities>()
                .AddSingletonActivities<InventoryActivities>();
        }
        builder.Services.AddSingleton(policies);
        // The audit activity signs events only for requests of this operator (a host checks steps so too).
        builder.Services.TryAddSingleton(sp => new OperatorTrust(sp.GetRequiredService<IOptions<TrustOptions>>().Value.PublicKey));
        builder.Services.AddSingleton<TransferWatch>();
        builder.AddBrokerConnection("orchestrator");
        builder.Services.AddSingleton<HostWorkers>();
        builder.Services.AddSingleton<EmbeddedSteps>();
        builder.Services.AddSingleton<EmbeddedEngine>();
        builder.Services.AddSingleton<DrainRunner>();
        builder.AddAuditTrail();
        // The auditor's key seals what this process appends and signs what it sends (in place of AddAuditTrail's reader).
        builder.Services.AddSingleton(sp => AuditSeal.ForAuditor(sp.GetRequiredService<IOptions<AuditOptions>>().Value, sp.GetRequiredService<IOptions<PostgresOptions>>().Value.Schema));
        builder.Services.AddSingleton(sp =>
        {
            var seal = sp.GetRequiredService<AuditSeal>();
            return new EventSigner(EventSigner.AuditorPrefix + seal.Fingerprint, seal.Sign);
        });
        builder.Services.AddSingleton<EventSignatures>();
        var progressEndpoint = StepQueues.OrchestratorProgressEndpoint();
        builder.Services.AddSingleton(sp => new HostRoutes(sp.GetRequiredService<IConnection>(), sp.GetRequiredService<IDocumentStore>(),
            sp.GetRequiredService<AuditRoute>(), progressEndpoint, sp.GetRequiredService<Microsoft.Extensions.Logging.ILogger<HostRoutes>>()));
        builder.Services.AddHostedService(sp => sp.GetRequiredService<HostRoutes>());
        return builder.AddMessaging(StepQueues.OrchestratorBusEndpoint(),
            x =>
            {
                // Steps' answers come back by RabbitMQ's direct reply-to (through the default exchange): hosts
                // need no right to declare or send to anything of the orchestrator's.
                x.SetRabbitMqReplyToRequestClientFactory();
                x.AddConsumer<TransferProgressConsumer>();
                x.AddConsumer<MigrationAuditConsumer>();
            },
            (bus, cfg) =>
            {
                cfg.ReceiveEndpoint(progressEndpoint, e =>
                {
                    (e.Durable, e.AutoDelete, e.Exclusive) = (false, true, true); // this process's own
                    e.ConfigureConsumeTopology = false; // bound from each host's progress exit (HostRoutes)
                    e.ConfigureConsumer<TransferProgressConsumer>(bus);
                });
                foreach (var queue in bus.GetRequiredService<AuditRoute>().Queues)
                {
                    cfg.ReceiveEndpoint(queue, e =>
                    {
                        // Per queue, one consumer at a time over all processes, one message at a time: a
                        // stream keeps its order; the streams of other queues go on meanwhile.
                        e.SingleActiveConsumer = true;
                        e.PrefetchCount = 1;
                        e.ConcurrentMessageLimit = 1;
                        e.ConfigureConsumeTopology = false; // events are sent to their stream's queue, not published
                        e.UseMessageRetry(r =>
                        {
                            r.Interval(10, TimeSpan.FromSeconds(1)); // in place: the order holds
                        });
                        e.ConfigureConsumer<MigrationAuditConsumer>(bus);
                    });
                }
            });
    }

    /// <summary>Marten with the migration streams and their summaries; schema objects made on first use.</summary>
    public static IHostApplicationBuilder AddAuditTrail(this IHostApplicationBuilder builder)
    {
        builder.Services.AddMarten(sp =>
        {
            var pg = sp.GetRequiredService<IOptions<PostgresOptions>>().Value;
            var o = new StoreOptions();
            o.Connection(pg.ConnectionString);
            o.DatabaseSchemaName = pg.Schema;
            o.AutoCreateSchemaObjects = AutoCreate.CreateOrUpdate;
            // Every event type, as the contract lists them for JSON (one list to keep).
            o.Events.AddEventTypes([.. typeof(IMigrationEvent).GetCustomAttributes<JsonDerivedTypeAttribute>().Select(a => a.DerivedType), typeof(VmPaged), typeof(HostSeen)]);
            o.Events.MetadataConfig.HeadersEnabled = true; // where each event's hash chain is kept (AuditChain)
            o.Projections.Add<MigrationSummaryProjection>(ProjectionLifecycle.Inline);
            o.Projections.Add<VmPagingSummaryProjection>(ProjectionLifecycle.Inline);
            o.Projections.Add<FleetHostProjection>(ProjectionLifecycle.Inline);
            // Documents stored outside projections: known up front, so AuditTrailSchema makes their tables too.
            o.RegisterDocumentType<RecordedMessage>();
            o.RegisterDocumentType<RefusedEvent>();
            o.RegisterDocumentType<Embedded.DrainSchedule>();
            o.RegisterDocumentType<Trust.HostEnrolment>();
            return o;
        }).UseLightweightSessions();
        // First of the hosted services: the schema is there before the bus or the engine use the store.
        builder.Services.Insert(0, ServiceDescriptor.Singleton<IHostedService, AuditTrailSchema>());
        // What checks the trail's seals and heads outside PostgreSQL (an orchestrator replaces it with its auditor's).
        builder.Services.AddSingleton(sp => AuditSeal.ForReader(sp.GetRequiredService<IOptions<AuditOptions>>().Value, sp.GetRequiredService<IOptions<PostgresOptions>>().Value.Schema));
        return builder;
    }

    /// <summary>The Temporal server, when one is configured (validated on start like every option).</summary>
    private static TemporalOptions? Temporal(IHostApplicationBuilder builder) =>
        builder.Configuration.GetSection(TemporalOptions.Section).Get<TemporalOptions>() is { IsConfigured: true } t ? t : null;

    /// <summary>The page path: one RabbitMQ.Client connection and a page client on it.</summary>
    private static void AddPagePath(this IHostApplicationBuilder builder, string name)
    {
        builder.AddBrokerConnection(name);
        builder.Services.AddSingleton(sp => PageClient.CreateAsync(sp.GetRequiredService<IConnection>()).GetAwaiter().GetResult());
    }

    /// <summary>One RabbitMQ.Client connection of the process (MassTransit keeps its own).</summary>
    private static void AddBrokerConnection(this IHostApplicationBuilder builder, string name) =>
        builder.Services.AddSingleton(sp =>
            sp.GetRequiredService<IOptions<RabbitMqOptions>>().Value.ConnectionFactory(name).CreateConnectionAsync().GetAwaiter().GetResult());

    /// <summary>MassTransit on RabbitMQ, its bus endpoint named <paramref name="busEndpoint"/> and exclusive to
    /// the process, so no other account can take it.</summary>
    private static IHostApplicationBuilder AddMessaging(this IHostApplicationBuilder builder, string busEndpoint,
        Action<IBusRegistrationConfigurator> consumers, Action<IBusRegistrationContext, IRabbitMqBusFactoryConfigurator> endpoints)
    {
        builder.Services.AddOptions<MassTransitHostOptions>().Configure(o =>
        {
            // Start fails with the broker's reason rather than waiting forever (e.g. a queue declared
            // earlier with other arguments).
            o.WaitUntilStarted = true;
            o.StartTimeout = TimeSpan.FromSeconds(60);
        });
        builder.Services.AddMassTransit(x =>
        {
            x.DisableUsageTelemetry(); // no phoning home from hosts that carry guest memory
            consumers(x);
            x.UsingRabbitMq((bus, cfg) =>
            {
                var f = bus.GetRequiredService<IOptions<RabbitMqOptions>>().Value.ConnectionFactory("masstransit");
                cfg.Host(f.HostName, (ushort)f.Endpoint.Port, f.VirtualHost, h =>
                {
                    h.Username(f.UserName);
                    h.Password(f.Password);
                    if (f.Ssl.Enabled)
                    {
                        h.UseSsl(s => s.ServerName = f.Ssl.ServerName);
                    }
                });
                cfg.OverrideDefaultBusEndpointQueueName(busEndpoint);
                cfg.Exclusive = true;
                // Every message says which broker user sent it (RabbitMQ checks it is the connection's): the
                // auditor records a host's events only from that host's user (AuditSenders).
                // An event for the audit trail is signed by this process's host or auditor key (EventSignatures).
                var signer = bus.GetService<EventSigner>();
                cfg.ConfigureSend(s => s.UseExecute(c =>
                {
                    if (c.TryGetPayload<RabbitMqSendContext>(out var rabbit))
                    {
                        rabbit.BasicProperties.UserId = f.UserName;
                    }
                    if (signer is not null && c is SendContext<object> { Message: var m } && EventSigner.Signs(m))
                    {
                        c.Headers.Set(EventSigner.SignerHeader, signer.Name);
                        c.Headers.Set(EventSigner.SignatureHeader, Convert.ToBase64String(signer.Sign(EventSigner.Statement(m))));
                    }
                }));
                endpoints(bus, cfg);
            });
        });
        return builder;
    }
}
