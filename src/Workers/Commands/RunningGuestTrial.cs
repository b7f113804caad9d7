using System.Diagnostics;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Guest.Qemu;
using SEmigrate.Workers.Trust;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Processes;
using SEmigrate.Workers.Roles;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Commands;

/// <summary>A running guest migrated and watched (the demo's, and each mode of `bench paper`): a guest
/// started on the source host (in the source worker's mount namespace, as `semigrate guest start`
/// there) with a memory workload, migrated while it runs to a main host holding about a third of it and
/// two sub-hosts, and watched going on at the main host on RAM paged from the sub-hosts.</summary>
public static class RunningGuestTrial
{
    private const string Name = "demo-live";
    private const int MemoryMiB = 256;
    private const int WorkloadMiB = 128;

    /// <summary>What the demo saw: the workload's last pass at the source, its passes at the main host
    /// (pages ever found wrong), and the main host's paging. Downtime: from the pause at the source (for introspection) to the continue at the main
    /// host; TransferSeconds: the part of it spent sending the pages (the pages classified, when the
    /// transfers start, to the last destination's transfer recorded; paging started before the pause). RunSeconds: the first passes at the main host, timed inside the
    /// guest. CPU seconds per role over the migration and the watch (the guest's own QEMU excluded).</summary>
    public sealed record Result(
        string Mode, string State, string? Reason, long PassAtSource, int PassesAtMain, long WrongPages, double MigrationSeconds, double DowntimeSeconds,
        double TransferSeconds, double WatchedSeconds, double RunSeconds, long PageIns, long PageOuts, double PagedInMiB, double PagedOutMiB, double FaultedMiB, double PeakResidentMiB, double ShareMiB,
        double PageInP99Ms, Cpu CpuSeconds, string? AuditFailures = null, string Eviction = "2q", double SourcePassMs = 0, double MainPassMs = 0);

    public sealed record Cpu(double Source, double Main, double Sub, double Broker);

    /// <summary>The middle value (0 for none): a pass's typical time, which one slow pass does not move.</summary>
    public static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count == 0 ? 0 : sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
    }

    /// <summary>What `semigrate audit` finds wrong with the migration; null when it passes.</summary>
    public static async Task<string?> AuditAsync(IServiceProvider services, Guid migrationId, CancellationToken ct) =>
        await MigrationAudit.RunAsync(services.GetRequiredService<IDocumentStore>(), services.GetRequiredService<Audit.AuditSeal>(), migrationId, ct) is { } audit ? audit.Failures : "no stream";

    /// <summary>Migrates in <paramref name="mode"/>, then watches until <paramref name="passes"/> passes ran
    /// at the main host and at least <paramref name="watch"/> went by; the main host evicts by
    /// <paramref name="eviction"/> (MainHost:Eviction).</summary>
    public static async Task<Result?> RunAsync(MigrationMode mode, int passes, TimeSpan watch, string? keepDir, Action<string> say, CancellationToken ct, string eviction = "2q")
    {
        if (!WorkerFleet.CanIsolate)
        {
            say("running guest: skipped (the hosts' mount namespaces and FUSE need root)");
            return null;
        }
        var id = Guid.NewGuid().ToString("N")[..6];
        var (source, main, sub1, sub2) = ($"live-{id}-source", $"live-{id}-main", $"live-{id}-sub-1", $"live-{id}-sub-2");
        var root = keepDir is null ? Directory.CreateTempSubdirectory("semigrate-live-").FullName : Path.Combine(keepDir, $"running-{mode.ToWireName()}");
        var guests = Directory.CreateDirectory(Path.Combine(root, "guests")).FullName;
        var logs = Directory.CreateDirectory(Path.Combine(root, "logs")).FullName;
        // The main host's share is a third of the guest, as in the original paper; the sub-hosts hold the rest.
        var (mainPages, subPages) = (MemoryMiB * 256L * 35 / 100, MemoryMiB * 256L * 40 / 100);
        say($"running guest: starting workers {source}, {main}, {sub1}, {sub2}, each in a mount namespace of its own");
        using var host = Orchestrator.Build(StepPolicies.Default);
        var workerEnvironment = LocalOperator.WorkerEnvironment(host.Services); // the operator's key first: the auditor checks enrolments with it
        workerEnvironment["SEMIGRATE__MainHost__Eviction"] = eviction;
        await host.StartAsync(ct);
        using var fleet = await WorkerFleet.StartAsync(
        [
            new WorkerFleet.Worker("source", source, GuestsFolder: guests),
            new WorkerFleet.Worker("main", main, mainPages + 8192), // its share, and the kernel, initramfs and device state handed over
            new WorkerFleet.Worker("sub", sub1, subPages + 1024),
            new WorkerFleet.Worker("sub", sub2, subPages + 1024),
        ], Path.Combine(root, "hosts"), logs, ct, workerEnvironment, isolated: true);
        await LocalOperator.EnrolAsync(host.Services, fleet, ct);
        var vm = Guid.NewGuid();
        try
        {
            say($"running guest: booting {Name} ({MemoryMiB} MiB, a {WorkloadMiB} MiB workload) on {source}");
            await StartOnSourceAsync(fleet[source].Pid, Name, MemoryMiB, WorkloadMiB, ct,
                "--process", "vaultdb:16:VAULTDBMARK", "--process", "webapp:8:WEBAPPMARK", "--freed", "scratch:24:STALEMARK");
            var serial = Path.Combine(guests, Name, "serial.log");
            await UntilAsync(() => LiveGuest.PassesIn(File.ReadAllText(serial)).Count >= 3, TimeSpan.FromMinutes(3), ct);
            say($"running guest: at {source}: {LiveGuest.PassesIn(File.ReadAllText(serial))[^1]}; migrating while it runs");

            var request = new MigrationRequest(Guid.NewGuid(), vm, Name, source, new Destination(main, mainPages),
                [new Destination(sub1, subPages), new Destination(sub2, subPages)], mode, ["vaultdb"]);
            request = await OperatorAuthority.SignAsync(host.Services, request, ct);
            var broker = CpuMeter.BrokerPid();
            var cpu0 = (fleet.CpuSecondsByRole(), CpuMeter.Seconds(broker));
            var clock = Stopwatch.StartNew();
            var outcome = await MigrateCommand.FollowAsync(host.Services, request, quiet: true, ct) ?? throw new InvalidOperationException("the demo never detaches");
            var seconds = clock.Elapsed.TotalSeconds;
            var atSource = LiveGuest.PassesIn(File.ReadAllText(serial));
            if (outcome.State != MigrationState.SwitchedOver || outcome.SwitchOver is not { Running: true })
            {
                say($"running guest: {outcome.State}: {outcome.Reason}");
                return new Result(mode.ToWireName(), outcome.State.ToString(), outcome.Reason, atSource.LastOrDefault()?.Pass ?? 0, 0, 0, seconds, seconds, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    new Cpu(0, 0, 0, 0));
            }

            // The main host's view of the guest: its serial log there, where the workload goes on.
            var mainSerial = Path.Combine(root, "hosts", main, "migrations", request.MigrationId.ToString("N"), "vm", "serial.log");
            IReadOnlyList<WorkloadPass> PassesAtMain() => File.Exists(mainSerial) ? LiveGuest.PassesIn(File.ReadAllText(mainSerial)) : [];
            say($"running guest: switched over in {seconds:0.0} s; it runs at {main} now, watching it for {passes} passes and {watch.TotalSeconds:0} s");
            var watching = Stopwatch.StartNew();
            await UntilAsync(() => PassesAtMain().Count >= passes, TimeSpan.FromMinutes(10), ct);
            while (watching.Elapsed < watch)
            {
                await Task.Delay(Min(watch - watching.Elapsed, TimeSpan.FromMinutes(1)), ct);
                var seen = PassesAtMain();
                say($"running guest: {watching.Elapsed.TotalMinutes:0.0} of {watch.TotalMinutes:0.0} min at {main}: pass {seen.LastOrDefault()?.Pass}, {seen.LastOrDefault()?.Errors} pages ever wrong");
            }
            var watched = watching.Elapsed.TotalSeconds;
            var atMain = PassesAtMain();
            var cpu1 = (fleet.CpuSecondsByRole(), CpuMeter.Seconds(broker));
            var cpu = new Cpu(cpu1.Item1["source"] - cpu0.Item1["source"], cpu1.Item1["main"] - cpu0.Item1["main"], cpu1.Item1["sub"] - cpu0.Item1["sub"], cpu1.Item2 - cpu0.Item2);
            await Task.Delay(PagingReporter.Every * 2, ct); // the last paging report reaches the audit trail
            await using var query = host.Services.GetRequiredService<IDocumentStore>().QuerySession();
            var paging = await query.LoadAsync<VmPagingSummary>(vm, ct);
            var events = (await query.Events.FetchStreamAsync(request.MigrationId, token: ct)).Select(e => e.Data).ToList();
            var classified = events.OfType<PagesClassified>().FirstOrDefault();
            var transferSeconds = classified is not null && events.OfType<DestinationTransferred>().Any()
                ? (events.OfType<DestinationTransferred>().Max(e => e.At) - classified.At).TotalSeconds : 0;
            if (outcome.PausedAt is { } paused && outcome.SwitchOver.ContinuedAt is { } continued && classified is not null)
            {
                say($"running guest: downtime {(continued - paused).TotalSeconds:0.00} s: introspection {(classified.At - paused).TotalSeconds:0.00}, " +
                    $"sending pages (the hand-over beside them) {transferSeconds:0.00}, the rest of the hand-over and the switch-over " +
                    $"{(continued - classified.At).TotalSeconds - transferSeconds:0.00}");
            }
            var result = new Result(mode.ToWireName(), outcome.State.ToString(), null, atSource.LastOrDefault()?.Pass ?? 0, atMain.Count, atMain.LastOrDefault()?.Errors ?? -1,
                seconds, outcome.Downtime?.TotalSeconds ?? seconds, transferSeconds, watched, atMain.Take(passes).Sum(p => p.Milliseconds) / 1000.0, paging?.PagesIn ?? 0, paging?.PagesOut ?? 0,
                (paging?.BytesIn ?? 0) / 1048576.0, (paging?.BytesOut ?? 0) / 1048576.0, (paging?.FaultedBytes ?? 0) / 1048576.0,
                (paging?.PeakResidentPages ?? 0) / 256.0, (paging?.BudgetPages ?? 0) / 256.0, paging?.LastPageInP99Ms ?? 0, cpu, await AuditAsync(host.Services, request.MigrationId, ct),
                eviction, Median(atSource.Select(p => (double)p.Milliseconds)), Median(atMain.Take(passes).Select(p => (double)p.Milliseconds)));
            say($"running guest: semigrate audit {request.MigrationId}: {result.AuditFailures ?? "passed"}");
            say($"running guest: at {main}: passes {atMain.FirstOrDefault()?.Pass}..{atMain.LastOrDefault()?.Pass}, {result.WrongPages} pages ever wrong; " +
                $"{result.PagedInMiB:0} MiB paged in, {result.PagedOutMiB:0} MiB paged out, resident at most {result.PeakResidentMiB:0} MiB of a {result.ShareMiB:0} MiB share");
            return result;
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
            fleet.Dispose();
            StopSourceGuest(Path.Combine(guests, Name));
            await LocalOperator.ForgetAsync(host.Services, [source, main, sub1, sub2], [vm]);
            if (keepDir is null)
            {
                Directory.Delete(root, recursive: true);
            }
        }
    }

    /// <summary>`semigrate guest start` inside the source worker's mount namespace: the guest runs on the source host.</summary>
    public static async Task StartOnSourceAsync(int sourcePid, string name, int memoryMiB, int workloadMiB, CancellationToken ct, params string[] processes)
    {
        var start = new ProcessStartInfo("nsenter",
        [
            "--target", sourcePid.ToString(System.Globalization.CultureInfo.InvariantCulture), "--mount", "--", ChildProcess.Executable,
            "guest", "start", name, "--guests", WorkerFleet.IsolatedGuests, "--mem", $"{memoryMiB}M", .. processes, "--workload", $"{workloadMiB}",
        ])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start nsenter");
        var stderr = process.StandardError.ReadToEndAsync(ct);
        _ = await process.StandardOutput.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct);
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"starting the running guest failed: {(await stderr).Trim()}");
        }
    }

    /// <summary>The source's QEMU lives on its own; a migration that switched over ended it already.</summary>
    public static void StopSourceGuest(string folder)
    {
        var pidFile = Path.Combine(folder, "qemu.pid");
        if (File.Exists(pidFile) && int.TryParse(File.ReadAllText(pidFile).Trim(), out var pid))
        {
            try
            {
                using var qemu = Process.GetProcessById(pid);
                qemu.Kill();
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException)
            {
                // gone already
            }
        }
    }

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    public static async Task UntilAsync(Func<bool> done, TimeSpan timeout, CancellationToken ct)
    {
        var until = DateTime.UtcNow + timeout;
        while (!done())
        {
            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException($"the running guest did not get there within {timeout.TotalSeconds:0} s");
            }
            await Task.Delay(250, ct);
        }
    }
}
