using Marten;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Processes;
using SEmigrate.Workers.Trust;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>A source, a main and two sub-host workers (separate processes, names unique to the test) and
/// an orchestrator in the test process whose audit trail goes to the fixture's schema.</summary>
internal sealed class MigrationRun : IAsyncDisposable
{
    private readonly DirectoryInfo state;

    private readonly string suffix;

    private MigrationRun(DirectoryInfo state, WorkerFleet fleet, IHost host, string suffix)
    {
        this.suffix = suffix;
        (this.state, Fleet, Host) = (state, fleet, host);
        (Source, Main, Sub1, Sub2) = ($"src-{suffix}", $"main-{suffix}", $"sub1-{suffix}", $"sub2-{suffix}");
    }

    public WorkerFleet Fleet { get; }

    public IHost Host { get; }

    public EmbeddedSteps Steps => Host.Services.GetRequiredService<EmbeddedSteps>();

    /// <summary>Runs the migration on the embedded engine, as `migrate` does (journaled, auditable), signed
    /// by the tests' operator unless it is signed already.</summary>
    public async Task<MigrationOutcome> MigrateAsync(MigrationRequest request, CancellationToken ct) =>
        await Host.Services.GetRequiredService<EmbeddedEngine>().RunAsync(await SignAsync(request, ct), null, ct);

    /// <summary>The request as `semigrate migrate` signs it (the hosts' enrolled keys pinned); one signed already stays as it is.</summary>
    public async Task<MigrationRequest> SignAsync(MigrationRequest request, CancellationToken ct) =>
        request.Signature is not null || request.Order is not null ? request : await OperatorAuthority.SignAsync(Host.Services, request, ct);

    /// <summary>Enrols <paramref name="host"/>, a host that runs no worker, with a key pair of its own, as the operator would.</summary>
    public async Task EnrolAbsentAsync(string host, CancellationToken ct)
    {
        using var key = Sealing.OperatorKey.Load(TestOperator.KeyFile);
        using var identity = Sealing.HostKeyPair.Generate();
        await OperatorAuthority.EnrolAsync(Host.Services.GetRequiredService<IDocumentStore>(), key, new HostIdentity(host, identity.PublicKey), ct);
    }

    /// <summary>The drain as `semigrate maintenance drain` orders it.</summary>
    public Task<DrainHost> OrderAsync(DrainHost drain, CancellationToken ct) => OperatorAuthority.OrderAsync(Host.Services, drain, [Main], ct);

    /// <summary>The settings a `semigrate` command run by the test needs to see this run's audit trail.</summary>
    public async Task<Dictionary<string, string>> CommandEnvironmentAsync(string schema) =>
        new(await ServicesScript.SettingsAsync()) { ["SEMIGRATE__Postgres__Schema"] = schema, ["SEMIGRATE__Audit__Queue"] = AuditQueue };

    /// <summary>`semigrate audit`'s checks on the migration's stream: every one must hold.</summary>
    public async Task AssertAuditedAsync(Guid migrationId, CancellationToken ct)
    {
        var report = await MigrationAudit.RunAsync(Host.Services.GetRequiredService<IDocumentStore>(), Host.Services.GetRequiredService<AuditSeal>(), migrationId, ct);
        Assert.NotNull(report);
        Assert.True(report.Ok, string.Join("\n", report.Verdicts.Select(v => $"{(v.Ok ? "ok" : "FAILED")} {v.Invariant}: {v.Detail}")));
    }

    /// <summary>The fleet inventory once <paramref name="holds"/> holds (hosts report every 2 s here); fails naming <paramref name="what"/>.</summary>
    public async Task<FleetInventory.Fleet> FleetOnceAsync(Func<FleetInventory.Fleet, bool> holds, string what, CancellationToken ct)
    {
        var store = Host.Services.GetRequiredService<IDocumentStore>();
        var until = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            var fleet = await FleetInventory.ReadAsync(store, ct);
            if (holds(fleet))
            {
                return fleet;
            }
            Assert.True(DateTime.UtcNow < until, $"not within 60 s: {what}; the fleet: {System.Text.Json.JsonSerializer.Serialize(fleet)}");
            await Task.Delay(200, ct);
        }
    }

    /// <summary>Every host of the run has reported to the fleet inventory.</summary>
    public bool AllReported(FleetInventory.Fleet fleet) => new[] { Source, Main, Sub1, Sub2 }.All(h => fleet.Hosts.Any(x => x.Host == h));

    public string Source { get; }

    public string Main { get; }

    public string Sub1 { get; }

    public string Sub2 { get; }

    public string AuditQueue => $"semigrate-audit-{suffix}";

    public string StateOf(string host) => Path.Combine(state.FullName, host);

    /// <summary>What a host's worker wrote to its standard error (its log).</summary>
    public string LogOf(string host) => File.Exists(Path.Combine(state.FullName, $"{host}.log")) ? File.ReadAllText(Path.Combine(state.FullName, $"{host}.log")) : "";

    /// <summary>Whether a host's memory server holds pages of the VM, as its administrator sees its store folder
    /// (a VM's pages are a file there): over the broker, only the main host, which holds the VM's capability, may ask.</summary>
    public bool HoldsPagesOf(string host, Guid vm) => new FileInfo(Path.Combine(StoreOf(host), $"{vm:N}.pages")) is { Exists: true, Length: > 0 };

    /// <summary>A memory server's store folder (the main host's holds its share): what its administrator could read.</summary>
    public string StoreOf(string host) => Path.Combine(StateOf(host), "store");

    /// <summary>With <paramref name="temporalAddress"/>, the workers also serve their activities on Temporal
    /// and the orchestrator runs the migration workflow's worker.</summary>
    /// <summary>The source keeps its guests in <paramref name="guests"/> (where the test fixture boots them); a
    /// request names one of them. Sub-hosts keep their pages in files, or <paramref name="sub1InMemory"/>
    /// the first in memory (what it holds dies with its process). With <paramref name="sourceAndMain"/>,
    /// the source and the main host each run both roles (one worker, one queue).</summary>
    public static async Task<MigrationRun> StartAsync(PostgresFixture postgres, StepPolicies policies, CancellationToken ct, bool startSub2 = true, double sourceMaxMBps = 0,
        string? temporalAddress = null, string? guests = null, bool sub1InMemory = false, bool sourceAndMain = false)
    {
        foreach (var (key, value) in await ServicesScript.SettingsAsync())
        {
            Environment.SetEnvironmentVariable(key, value); // the workers and the orchestrator read them
        }
        TestOperator.Use(); // the workers pin the tests' operator key; the orchestrator signs with it
        var suffix = Guid.NewGuid().ToString("N")[..8];
        var state = Directory.CreateTempSubdirectory("semigrate-e2e-");
        string Store(string host) => Path.Combine(state.FullName, host, "store");
        WorkerFleet.Worker[] workers =
        [
            sourceAndMain
                ? new("source,main", $"src-{suffix}", 200_000, Store($"src-{suffix}"), sourceMaxMBps, guests ?? RealGuestFixture.Folder)
                : new("source", $"src-{suffix}", MaxMBps: sourceMaxMBps, GuestsFolder: guests ?? RealGuestFixture.Folder),
            new(sourceAndMain ? "main,source" : "main", $"main-{suffix}", 200_000, Store($"main-{suffix}")),
            new("sub", $"sub1-{suffix}", 30_000, sub1InMemory ? null : Store($"sub1-{suffix}")),
            .. startSub2 ? [new WorkerFleet.Worker("sub", $"sub2-{suffix}", 30_000, Store($"sub2-{suffix}"))] : Array.Empty<WorkerFleet.Worker>(),
        ];
        // The workers send the events they raise (security, paging) to this test's auditor.
        var environment = new Dictionary<string, string>
        {
            ["SEMIGRATE__Audit__Queue"] = $"semigrate-audit-{suffix}",
            ["SEMIGRATE__Fleet__ReportSeconds"] = "2", // the fleet inventory follows within seconds
        };
        if (temporalAddress is not null)
        {
            environment["SEMIGRATE__Temporal__Address"] = temporalAddress;
        }
        // Hosts share nothing: every worker runs in a mount namespace of its own (see WorkerFleet).
        var fleet = await WorkerFleet.StartAsync(workers, state.FullName, state.FullName, ct, environment, isolated: true);
        var host = Orchestrator.Build(policies, new Dictionary<string, string?>
        {
            ["Postgres:Schema"] = postgres.Schema,
            ["Audit:Queue"] = $"semigrate-audit-{suffix}", // this test's auditor only
            ["Temporal:Address"] = temporalAddress ?? "",
        });
        await host.StartAsync(ct);
        await LocalOperator.EnrolAsync(host.Services, fleet, ct); // into this test's schema
        return new MigrationRun(state, fleet, host, suffix);
    }

    private readonly List<Guid> vms = [];

    /// <summary>A request to move the guest in <paramref name="guestDir"/> (in the source's guests folder).</summary>
    public MigrationRequest Request(string guestDir, MigrationMode mode, long mainCapacity, long subCapacity) =>
        new(Guid.NewGuid(), NewVm(), Path.GetFileName(guestDir), Source, new Destination(Main, mainCapacity),
            [new Destination(Sub1, subCapacity), new Destination(Sub2, subCapacity)], mode, ["vaultdb"]);

    private Guid NewVm()
    {
        var vm = Guid.NewGuid();
        vms.Add(vm);
        return vm;
    }

    public async ValueTask DisposeAsync()
    {
        var auditQueues = Host.Services.GetRequiredService<Contracts.Audit.AuditRoute>().Queues.ToArray();
        await Host.StopAsync();
        Host.Dispose();
        Fleet.Dispose();
        await WorkerFleet.DeleteQueuesAsync(new Uri((await ServicesScript.SettingsAsync())["SEMIGRATE__RabbitMq__Uri"]), [Source, Main, Sub1, Sub2], vms,
            auditQueues: auditQueues, extraQueues: auditQueues);
        try
        {
            state.Delete(recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
