using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Guest.Memory;
using SEmigrate.Guest.Qemu;
using SEmigrate.Workers.Trust;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Processes;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate demo`: the main job on one machine. Starts the services, boots (or reuses) a real
/// guest, starts a source, a main and two sub-host workers as separate processes (each in a mount
/// namespace of its own, as root), migrates, checks by digests that the main host serves (its share from
/// its store, every other page fetched, checked and opened) exactly what the source sent, and prints a
/// summary; once per mode, side by side.</summary>
public static class DemoCommand
{
    /// <summary>The default guest: an encrypted database (its pages may travel as-is), a web app, and a
    /// process that filled memory with a marker and freed it (stale bytes that must not travel).</summary>
    public static readonly GuestSpec DefaultGuest = new(256,
    [
        new GuestProcess("vaultdb", 16, "VAULTDBMARK"),
        new GuestProcess("webapp", 8, "WEBAPPMARK"),
        new GuestProcess("scratch", 24, "STALEMARK", Freed: true),
    ]);

    public sealed record Destination(string Host, long Pages, long Bytes);

    public sealed record CpuSeconds(double Source, double Main, double Sub, double Orchestrator);

    /// <summary>Peak resident memory of each role's worker (the largest sub-host's), in MiB.</summary>
    public sealed record PeakRssMiB(double Source, double Main, double Sub);

    public sealed record Run(
        string Mode, Guid MigrationId, string State, string? Reason, bool DigestOk, long PagesCompared, long MismatchedChunks, long PagesFromSubHosts, string? Digest,
        PageCounts? Pages, IReadOnlyList<Destination> Destinations, long ManifestBytes, double WallSeconds, CpuSeconds CpuSeconds, PeakRssMiB PeakRssMiB, int AuditEvents,
        string? AuditFailures)
    {
        /// <summary>`semigrate audit` passed on the migration's stream.</summary>
        public bool Audited => AuditFailures is null;

        /// <summary>Everything the migration put on the broker's page path: each page once, and the manifest.</summary>
        public long BrokerBytes => Destinations.Sum(d => d.Bytes) + ManifestBytes;
    }

    public static RootCommand AddDemoCommand(this RootCommand root)
    {
        var modes = new Option<string[]>("--mode") { Description = "semigrate, allenc or noenc (repeatable; default: all three, side by side)" };
        var guestDir = new Option<DirectoryInfo?>("--guest") { Description = "Migrate this guest (made by `semigrate guest boot`) instead of the default one" };
        var plain = new Option<string[]>("--plain-process") { Description = "A process whose memory is already encrypted (default: vaultdb, when the guest has it)" };
        var keep = new Option<DirectoryInfo?>("--keep") { Description = "Leave each host's state, the sub-hosts' store folders and the logs here" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object per mode (one line each), and one for the running guest" };
        var noRunning = new Option<bool>("--no-running") { Description = "Skip the running guest (migrated while it runs, then watched at the main host)" };
        var drain = new Option<bool>("--drain") { Description = "Instead: host maintenance, a host running two guests drained to the others; with --json, "
            + "{\"drained\",\"moved\":[{\"vm\",\"to\",\"state\"}],\"notMoved\":[{\"vm\",\"reason\"}]}" };
        var command = new Command("demo", "Start everything on this machine, migrate a real guest to a main host and two sub-hosts, check every page, print a summary")
        {
            modes, guestDir, plain, keep, json, noRunning, drain,
        };
        command.SetAction(async (parse, ct) =>
        {
            MigrationMode[] chosen;
            try
            {
                chosen = parse.GetValue(modes) is { Length: > 0 } m ? [.. m.Select(MigrationModes.Parse).Distinct()] : [MigrationMode.Semigrate, MigrationMode.AllEnc, MigrationMode.NoEnc];
            }
            catch (FormatException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            void Say(string line) => Console.Error.WriteLine($"demo: {line}");

            Say("starting PostgreSQL and RabbitMQ (installing them if needed)");
            await ServicesUpAsync(ct);
            if (parse.GetValue(drain))
            {
                var report = await DrainTrial.RunAsync(parse.GetValue(keep)?.FullName, Say, ct);
                if (report is null)
                {
                    return 1;
                }
                Console.WriteLine(parse.GetValue(json) ? JsonSerializer.Serialize(report, MigrateCommand.Json)
                    : $"drained {report.Drained}: {string.Join("; ", report.Moved.Select(m => $"{m.Vm} -> {m.To} ({m.State})"))}" +
                      (report.NotMoved.Count > 0 ? $"; not moved: {string.Join("; ", report.NotMoved.Select(n => $"{n.Vm}: {n.Reason}"))}" : ""));
                return report.NotMoved.Count == 0 ? 0 : 1;
            }
            var guest = await GuestAsync(parse.GetValue(guestDir), Say, ct);
            var plainProcesses = parse.GetValue(plain) is { Length: > 0 } p ? p
                : guest.Spec.Processes.Any(x => x.Name == "vaultdb" && !x.Freed) ? ["vaultdb"] : [];
            var keepDir = parse.GetValue(keep)?.FullName;
            var runs = new List<Run>();
            foreach (var mode in chosen)
            {
                var run = await RunOnceAsync(guest, mode, plainProcesses, keepDir, quiet: parse.GetValue(json), Say, ct);
                runs.Add(run);
                if (parse.GetValue(json))
                {
                    Console.WriteLine(JsonSerializer.Serialize(run, MigrateCommand.Json));
                }
            }
            var running = parse.GetValue(noRunning) ? null : await RunningGuestTrial.RunAsync(MigrationMode.Semigrate, 3, TimeSpan.FromSeconds(20), keepDir, Say, ct);
            if (parse.GetValue(json) && running is not null)
            {
                Console.WriteLine(JsonSerializer.Serialize(new { running }, MigrateCommand.Json));
            }
            if (!parse.GetValue(json))
            {
                PrintSummary(runs, guest.Directory, plainProcesses);
                if (running is not null)
                {
                    Console.WriteLine();
                    Console.WriteLine($"running guest ({running.State}, semigrate): workload at pass {running.PassAtSource} at the source, then {running.PassesAtMain} passes at the main host, " +
                        $"{running.WrongPages} pages ever wrong; migrated in {running.MigrationSeconds:0.0} s; semigrate audit {running.AuditFailures ?? "passed"}");
                    Console.WriteLine($"  at the main host: {running.PagedInMiB:0} MiB paged in, {running.PagedOutMiB:0} MiB paged out, {running.FaultedMiB:0} MiB faulted in by the guest, " +
                        $"resident at most {running.PeakResidentMiB:0} MiB of a {running.ShareMiB:0} MiB share, page-in p99 {running.PageInP99Ms:0.0} ms");
                }
            }
            return runs.All(r => r.DigestOk && r.Audited) && running is null or { State: "SwitchedOver", WrongPages: 0, AuditFailures: null } ? 0 : 1;
        });
        root.Subcommands.Add(command);
        return root;
    }

    private static async Task<Run> RunOnceAsync(BootedGuest guest, MigrationMode mode, string[] plainProcesses, string? keepDir, bool quiet, Action<string> say, CancellationToken ct)
    {
        var name = mode.ToWireName();
        var id = Guid.NewGuid().ToString("N")[..6];
        var (source, main, sub1, sub2) = ($"demo-{id}-source", $"demo-{id}-main", $"demo-{id}-sub-1", $"demo-{id}-sub-2");
        var root = keepDir is null ? Directory.CreateTempSubdirectory("semigrate-demo-").FullName : Path.Combine(keepDir, name);
        Directory.CreateDirectory(root);
        long guestPages;
        using (var memory = GuestMemory.Open(guest.DumpPath))
        {
            guestPages = (long)memory.GuestPages;
        }
        // The main host takes about a third, the sub-hosts the rest: none could take the VM alone.
        var (mainPages, subPages) = (guestPages * 35 / 100, guestPages * 40 / 100);
        var logs = Directory.CreateDirectory(Path.Combine(root, "logs")).FullName;
        var isolated = WorkerFleet.CanIsolate;
        say($"{name}: starting workers {source}, {main}, {sub1}, {sub2} (state and logs in {root}; " +
            (isolated ? "each in a mount namespace of its own: no host sees another's files)" : "not isolated: mount namespaces need root)"));
        string? Store(string host) => keepDir is null ? null : Path.Combine(root, host, "store");
        using var host = Orchestrator.Build(StepPolicies.Default);
        var workerEnvironment = LocalOperator.WorkerEnvironment(host.Services); // the operator's key first: the auditor checks enrolments with it
        await host.StartAsync(ct);
        using var fleet = await WorkerFleet.StartAsync(
        [
            new WorkerFleet.Worker("source", source, GuestsFolder: Path.GetDirectoryName(guest.Directory)),
            new WorkerFleet.Worker("main", main, mainPages + 1024, Store(main)),
            new WorkerFleet.Worker("sub", sub1, subPages + 1024, Store(sub1)),
            new WorkerFleet.Worker("sub", sub2, subPages + 1024, Store(sub2)),
        ], root, logs, ct, workerEnvironment, isolated: isolated);
        await LocalOperator.EnrolAsync(host.Services, fleet, ct);
        var vm = Guid.NewGuid();
        try
        {
            var request = new MigrationRequest(Guid.NewGuid(), vm, Path.GetFileName(guest.Directory), source, new Contracts.Migration.Destination(main, mainPages),
                [new Contracts.Migration.Destination(sub1, subPages), new Contracts.Migration.Destination(sub2, subPages)], mode, plainProcesses);
            request = await OperatorAuthority.SignAsync(host.Services, request, ct);
            var cpu0 = (fleet.CpuSecondsByRole(), CpuMeter.Self());
            var clock = Stopwatch.StartNew();
            var outcome = await MigrateCommand.FollowAsync(host.Services, request, quiet, ct) ?? throw new InvalidOperationException("the demo never detaches");
            var wall = clock.Elapsed.TotalSeconds;
            var cpu1 = (fleet.CpuSecondsByRole(), CpuMeter.Self());
            var cpu = new CpuSeconds(cpu1.Item1["source"] - cpu0.Item1["source"], cpu1.Item1["main"] - cpu0.Item1["main"], cpu1.Item1["sub"] - cpu0.Item1["sub"], cpu1.Item2 - cpu0.Item2);

            MemoryCheck.Result? verified = null;
            if (outcome.State == MigrationState.SwitchedOver)
            {
                say($"{name}: switched over in {wall:0.0} s; checking every page {main} serves against what {source} sent (digests only)");
                verified = await MemoryCheck.CompareAsync(host.Services.GetRequiredService<EmbeddedSteps>(), request.MigrationId, outcome.Placement!, ct);
            }
            else
            {
                say($"{name}: {outcome.State}: {outcome.Reason}");
            }
            var rss = fleet.PeakResidentBytesByRole();
            var peak = new PeakRssMiB(rss["source"] / 1048576.0, rss["main"] / 1048576.0, rss["sub"] / 1048576.0);
            var audited = await Orchestrator.AuditedEndAsync(host.Services, request.MigrationId, TimeSpan.FromSeconds(30), ct);
            await using var query = host.Services.GetRequiredService<IDocumentStore>().QuerySession();
            var events = audited is null ? 0 : (await query.Events.FetchStreamAsync(request.MigrationId, token: ct)).Count;
            var auditFailures = await RunningGuestTrial.AuditAsync(host.Services, request.MigrationId, ct);
            say($"{name}: semigrate audit {request.MigrationId}: {auditFailures ?? "passed"}");
            return new Run(name, request.MigrationId, outcome.State.ToString(), outcome.Reason,
                verified is { Ok: true } v && v.Pages == outcome.Pages?.Total, verified?.Pages ?? 0, verified?.MismatchedChunks ?? 0, verified?.FetchedPages ?? 0, verified?.Digest,
                outcome.Pages, [.. outcome.Transfers.OrderBy(t => t.Host, StringComparer.Ordinal).Select(t => new Destination(t.Host, t.Pages, t.Bytes))],
                outcome.ManifestBytes, wall, cpu, peak, events, auditFailures);
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
            fleet.Dispose();
            await LocalOperator.ForgetAsync(host.Services, [source, main, sub1, sub2], [vm]);
            if (keepDir is null)
            {
                Directory.Delete(root, recursive: true);
            }
        }
    }

    private static void PrintSummary(List<Run> runs, string guestDir, string[] plain)
    {
        Console.WriteLine($"guest {guestDir}; already encrypted: {(plain.Length == 0 ? "none" : string.Join(", ", plain))}");
        string Row(string label, Func<Run, string> cell) => $"{label,-26}" + string.Concat(runs.Select(r => $"{cell(r),20}"));
        Console.WriteLine(Row("", r => r.Mode));
        Console.WriteLine(Row("state", r => r.State));
        Console.WriteLine(Row("digest check", r => r.DigestOk ? "ok" : r.State == "SwitchedOver" ? $"{r.MismatchedChunks} chunks differ" : "not run"));
        Console.WriteLine(Row("pages compared", r => $"{r.PagesCompared}"));
        Console.WriteLine(Row("  of them from sub-hosts", r => $"{r.PagesFromSubHosts}"));
        Console.WriteLine(Row("pages zero/plain/sealed", r => r.Pages is { } p ? $"{p.Zero}/{p.Plain}/{p.Sealed}" : "-"));
        foreach (var role in new[] { "main", "sub-1", "sub-2" })
        {
            Console.WriteLine(Row($"to {role}: pages", r => r.Destinations.FirstOrDefault(d => d.Host.EndsWith(role, StringComparison.Ordinal))?.Pages.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-"));
            Console.WriteLine(Row($"to {role}: MiB on broker", r => r.Destinations.FirstOrDefault(d => d.Host.EndsWith(role, StringComparison.Ordinal)) is { } d ? $"{d.Bytes / 1048576.0:0.0}" : "-"));
        }
        Console.WriteLine(Row("manifest KiB (to main)", r => $"{r.ManifestBytes / 1024.0:0.0}"));
        Console.WriteLine(Row("on the broker: MiB", r => $"{r.BrokerBytes / 1048576.0:0.0}"));
        Console.WriteLine(Row("wall seconds", r => $"{r.WallSeconds:0.00}"));
        Console.WriteLine(Row("CPU s source", r => $"{r.CpuSeconds.Source:0.00}"));
        Console.WriteLine(Row("CPU s main", r => $"{r.CpuSeconds.Main:0.00}"));
        Console.WriteLine(Row("CPU s sub-hosts", r => $"{r.CpuSeconds.Sub:0.00}"));
        Console.WriteLine(Row("CPU s orchestrator", r => $"{r.CpuSeconds.Orchestrator:0.00}"));
        Console.WriteLine(Row("peak RSS MiB source", r => $"{r.PeakRssMiB.Source:0}"));
        Console.WriteLine(Row("peak RSS MiB main", r => $"{r.PeakRssMiB.Main:0}"));
        Console.WriteLine(Row("peak RSS MiB sub (largest)", r => $"{r.PeakRssMiB.Sub:0}"));
        Console.WriteLine(Row("audit events", r => $"{r.AuditEvents}"));
        Console.WriteLine(Row("semigrate audit", r => r.Audited ? "passed" : "FAILED"));
        Console.WriteLine(Row("migration", r => $"{r.MigrationId.ToString()[..13]}"));
    }

    public static async Task ServicesUpAsync(CancellationToken ct)
    {
        var start = new ProcessStartInfo("bash", [Processes.HostBrokerUsers.Script, "up"]) { RedirectStandardOutput = true, UseShellExecute = false };
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start bash");
        var output = await process.StandardOutput.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct);
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"deploy/services.sh up failed (exit code {process.ExitCode})");
        }
        // KEY='value' lines: this process and the workers it starts use them.
        foreach (var line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (line.Split('=', 2) is [var key, var value] && key.StartsWith(SemigrateHost.EnvironmentPrefix, StringComparison.Ordinal))
            {
                Environment.SetEnvironmentVariable(key, value.Trim('\''));
            }
        }
    }

    private static async Task<BootedGuest> GuestAsync(DirectoryInfo? given, Action<string> say, CancellationToken ct)
    {
        if (given is not null)
        {
            try
            {
                return QemuGuest.Load(given.FullName);
            }
            catch (FileNotFoundException e)
            {
                throw new InvalidOperationException($"{given.FullName} is not a guest made by `semigrate guest boot`: {e.Message}");
            }
        }
        var cached = "/opt/semigrate/guests/demo"; // the demo source's guests folder: /opt/semigrate/guests
        try
        {
            var guest = QemuGuest.Load(cached);
            say($"reusing the guest in {cached}");
            return guest;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException)
        {
            say($"booting a {DefaultGuest.MemoryMiB} MiB Linux guest under QEMU with marker processes (cached in {cached})");
            return await QemuGuest.BootAndDumpAsync(DefaultGuest, cached, m => say($"guest: {m}"), ct);
        }
    }
}
