using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Guest.Qemu;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Audit;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>A running guest migrated: paused at the source for the stop-and-copy, its pages placed on
/// the main host and two sub-hosts as ever, its device state and kernel handed over sealed, and it
/// continues at the main host on RAM the main host's pager serves over FUSE, paging in from the
/// sub-hosts. The guest's own workload, which checks every page it owns on every pass, must go on
/// where it stopped with no page ever wrong.</summary>
public sealed class RunningGuestMigrationTests(PostgresFixture postgres) : IClassFixture<PostgresFixture>, IAsyncLifetime
{
    private readonly DirectoryInfo guests = Directory.CreateTempSubdirectory("semigrate-live-");

    public ValueTask InitializeAsync() => ValueTask.CompletedTask;

    public ValueTask DisposeAsync()
    {
        // The source's QEMU lives on its own: end it if the migration did not.
        Commands.RunningGuestTrial.StopSourceGuest(Path.Combine(guests.FullName, "g1"));
        guests.Delete(recursive: true);
        return ValueTask.CompletedTask;
    }

    [Theory]
    [InlineData(MigrationMode.Semigrate)]
    [InlineData(MigrationMode.AllEnc)]
    [InlineData(MigrationMode.NoEnc)]
    public async Task A_running_guest_continues_at_the_main_host_with_its_workload_intact_through_paging(MigrationMode mode)
    {
        var ct = TestContext.Current.CancellationToken;
        var folder = Path.Combine(guests.FullName, "g1");
        // An operator's guests folder, as a host has it (any user may look in; a temporary folder is 0700).
        File.SetUnixFileMode(guests.FullName, (UnixFileMode)0b111_101_101);
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, guests: guests.FullName);
        // webapp's memory is the secret: not named plain, it must be sealed wherever it lies.
        await StartGuestOnSourceAsync(run, "--process", "vaultdb:16:VAULTDBMARK", "--process", "webapp:8:WEBAPPMARK", "--freed", "scratch:24:STALEMARK");
        var listed = await SemigrateProcess.RunAsync(new Dictionary<string, string>(), "guest", "list", "--guests", guests.FullName);
        Assert.Matches(@"g1\s+running\s+256 MiB", listed.Stdout);
        // The main host's share (62 MiB) is less than the workload's 96 MiB: the guest runs on paging,
        // its pages going out to the sub-hosts and coming back.
        var request = run.Request(folder, mode, mainCapacity: 16000, subCapacity: 30000);
        // The guest's RAM in the clear, at the source before it leaves and at the main host where it runs
        // on: no local user but root reads or writes it.
        var attacks = new List<(string Attack, int Tries, int Refused)>(
            await LocalUser.TryAsync("the source", run.Fleet[run.Source].Pid, LiveGuest.RamIn(Path.Combine(Processes.WorkerFleet.IsolatedGuests, "g1")), 5));

        var outcome = await run.MigrateAsync(request, ct);

        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        attacks.AddRange(await LocalUser.TryAsync("the main host", run.Fleet[run.Main].Pid,
            Path.Combine(Processes.WorkerFleet.IsolatedState, "migrations", request.MigrationId.ToString("N"), "vm", "ram", "ram"), 5));
        foreach (var (attack, tries, refused) in attacks)
        {
            TestContext.Current.TestOutputHelper?.WriteLine($"{attack,-44} {tries,6} {refused,8}");
        }
        Assert.All(attacks, a => Assert.Equal(a.Tries, a.Refused));
        // The main host keeps the guest's kernel and initramfs (which may hold its disk keys) in memory
        // only, and the device state nowhere.
        var kit = Path.Combine(run.StateOf(run.Main), "migrations", request.MigrationId.ToString("N"), "vm");
        Assert.True(File.Exists(Path.Combine(kit, "serial.log")), $"no kit at {kit}");
        Assert.False(File.Exists(Path.Combine(kit, "initrd.gz")), "the initramfs stayed on the main host's disk");
        Assert.False(File.Exists(Path.Combine(kit, "vmlinuz")), "the kernel stayed on the main host's disk");
        Assert.False(File.Exists(Path.Combine(kit, "device.state")), "the device state stayed on the main host's disk");
        // Every host's disk searched for the secret (the source's guests folder too: the guest's RAM file
        // there is erased once the VM left). In noenc, sent as it is by request, the search finds it at
        // the hosts that store pages (which shows it can find it).
        var roots = new[] { run.Source, run.Main, run.Sub1, run.Sub2 }.Select(run.StateOf).Append(guests.FullName).ToList();
        var found = DiskSearch.Find(roots, "WEBAPPMARK");
        TestContext.Current.TestOutputHelper?.WriteLine($"{mode}: the secret on disk: "
            + (found.Count == 0 ? "nowhere" : string.Join(", ", found.Select(f => $"{f.File} ({f.Hits} times)"))));
        Assert.DoesNotContain(found, f => f.File.StartsWith(guests.FullName + "/", StringComparison.Ordinal) || f.File.StartsWith(run.StateOf(run.Source) + "/", StringComparison.Ordinal));
        if (mode == MigrationMode.NoEnc)
        {
            Assert.NotEmpty(found);
        }
        else
        {
            Assert.Empty(found);
        }
        // The main host's and the source's workers hold the data key and opened pages: their memory is
        // locked (never swapped).
        foreach (var holder in new[] { run.Main, run.Source })
        {
            var locked = long.Parse(File.ReadAllLines($"/proc/{run.Fleet[holder].Pid}/status").Single(l => l.StartsWith("VmLck:", StringComparison.Ordinal))
                .Split(':')[1].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
            TestContext.Current.TestOutputHelper?.WriteLine($"{holder}'s worker: {locked} kB of mappings locked (their pages as they are touched)");
            Assert.True(locked > 0, $"{holder}'s worker did not lock its memory");
        }
        await run.AssertAuditedAsync(request.MigrationId, ct);
        Assert.True(outcome.SwitchOver!.Running);
        var atSource = LiveGuest.PassesIn(File.ReadAllText(Path.Combine(folder, "serial.log")));
        Assert.NotEmpty(atSource);
        Assert.False(File.Exists(Path.Combine(folder, "qemu.pid")) && IsRunning(File.ReadAllText(Path.Combine(folder, "qemu.pid"))),
            "the source's QEMU ended when the VM left");

        var serial = SerialAtMain(run, request);
        var until = DateTime.UtcNow.AddMinutes(2);
        IReadOnlyList<WorkloadPass> atMain;
        while ((atMain = LiveGuest.PassesIn(File.Exists(serial) ? File.ReadAllText(serial) : "")).Count < 3)
        {
            Assert.True(DateTime.UtcNow < until, $"the guest did not go on at the main host; serial log:\n{(File.Exists(serial) ? File.ReadAllText(serial) : "(none)")}");
            await Task.Delay(200, ct);
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"at the source: {atSource[^1]}; at the main host: {atMain.Count} passes, first {atMain[0]}, last {atMain[^1]}");
        // It went on where it stopped (a report line the pause cut in two, half in each serial log, is lost).
        Assert.InRange(atMain[0].Pass, atSource[^1].Pass + 1, atSource[^1].Pass + 2);

        // Paging, as the main host reports it into the VM's stream: at least 200 MiB paged in and 50 MiB
        // paged out, and the guest stayed within the main host's share (+10%).
        await using var query = run.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        VmPagingSummary? paging = null;
        until = DateTime.UtcNow.AddMinutes(2);
        while ((paging = await query.LoadAsync<VmPagingSummary>(request.Vm, ct)) is not { PagesIn: >= 200 * 256, PagesOut: >= 50 * 256 }
            || LiveGuest.PassesIn(File.ReadAllText(serial)).Count < 5)
        {
            Assert.True(DateTime.UtcNow < until, $"no paging out and back in: {paging}");
            await Task.Delay(500, ct);
        }
        atMain = LiveGuest.PassesIn(File.ReadAllText(serial));
        TestContext.Current.TestOutputHelper?.WriteLine($"{paging}; {atMain.Count} passes at the main host, last {atMain[^1]}");
        Assert.Equal(outcome.SwitchOver.LocalPages, paging.BudgetPages);
        Assert.True(paging.PeakResidentPages <= paging.BudgetPages * 11 / 10,
            $"peak resident {paging.PeakResidentPages} pages, share {paging.BudgetPages}; main host's log:\n{string.Join('\n', run.LogOf(run.Main).Split('\n').Where(l => l.Contains("RAM", StringComparison.Ordinal) || l.Contains("fail", StringComparison.OrdinalIgnoreCase)).Take(20))}");
        Assert.All(atMain, p => Assert.Equal(0, p.Errors));

        // An operator sees where the VM runs, and stops it: every host lets go of its pages.
        var environment = new Dictionary<string, string>(await ServicesScript.SettingsAsync())
        {
            ["SEMIGRATE__Postgres__Schema"] = postgres.Schema,
            ["SEMIGRATE__Audit__Queue"] = run.AuditQueue,
        };
        var vms = await SemigrateProcess.RunAsync(environment, "vm", "list");
        Assert.Contains($"{request.Vm}  at {run.Main} (from {run.Source}", vms.Stdout, StringComparison.Ordinal);
        var stopped = await SemigrateProcess.RunAsync(environment, "vm", "stop", request.Vm.ToString());
        Assert.True(stopped.ExitCode == 0, stopped.Stderr);
        Assert.Matches($@"pages released: {run.Main} \d+, {run.Sub1} \d+, {run.Sub2} \d+|pages released: .*{run.Sub2} \d+", stopped.Stdout);
        Assert.False(File.Exists(Path.Combine(Path.GetDirectoryName(serial)!, "ram", "ram")), "the VM's RAM file is gone");
        until = DateTime.UtcNow.AddSeconds(30);
        while ((await query.LoadAsync<MigrationSummary>(request.MigrationId, ct))?.StoppedAt is null)
        {
            Assert.True(DateTime.UtcNow < until, "the stop is not in the audit trail");
            await Task.Delay(200, ct);
        }
        Assert.DoesNotContain(request.Vm.ToString(), (await SemigrateProcess.RunAsync(environment, "vm", "list")).Stdout, StringComparison.Ordinal);
        var again = await SemigrateProcess.RunAsync(environment, "vm", "stop", request.Vm.ToString());
        Assert.Equal(1, again.ExitCode);
        Assert.Contains("runs at no main host", again.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Sub_hosts_that_die_under_a_running_guest_are_an_availability_event_never_wrong_memory()
    {
        var ct = TestContext.Current.CancellationToken;
        var folder = Path.Combine(guests.FullName, "g1");
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, guests: guests.FullName);
        await StartGuestOnSourceAsync(run);
        var request = run.Request(folder, MigrationMode.Semigrate, mainCapacity: 16000, subCapacity: 30000);
        var outcome = await run.MigrateAsync(request, ct);
        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        await run.AssertAuditedAsync(request.MigrationId, ct);
        var serial = SerialAtMain(run, request);
        var until = DateTime.UtcNow.AddMinutes(2);
        while (LiveGuest.PassesIn(File.Exists(serial) ? File.ReadAllText(serial) : "").Count < 2)
        {
            Assert.True(DateTime.UtcNow < until, "the guest did not go on at the main host");
            await Task.Delay(200, ct);
        }

        run.Fleet[run.Sub1].Kill();
        run.Fleet[run.Sub2].Kill();

        await using var query = run.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        until = DateTime.UtcNow.AddMinutes(2);
        IReadOnlyList<object> events;
        while (!(events = [.. (await query.Events.FetchStreamAsync(request.MigrationId, token: ct)).Select(e => e.Data)]).OfType<PagesUnavailable>().Any())
        {
            Assert.True(DateTime.UtcNow < until, "no availability event");
            await Task.Delay(500, ct);
        }
        var unavailable = events.OfType<PagesUnavailable>().First();
        Assert.Contains(unavailable.Host, new[] { run.Sub1, run.Sub2 });
        Assert.Equal(run.Main, unavailable.Main);
        Assert.Contains($"could not be paged in from {unavailable.Host}", run.LogOf(run.Main), StringComparison.Ordinal);
        // Nothing wrong was ever served: no pass found a wrong page, and no page failed its check.
        Assert.All(LiveGuest.PassesIn(File.ReadAllText(serial)), p => Assert.Equal(0, p.Errors));
        Assert.Empty(events.OfType<PageCheckFailed>());
        // The guest never runs on memory it could not read: a read that fails ends its QEMU (the bus
        // error). A guest that, by where its memory lies, touches nothing of the dead hosts' again runs
        // on, on right memory only.
        var id = request.MigrationId.ToString("N");
        bool QemuRuns() => Directory.GetDirectories("/proc").Any(d => int.TryParse(Path.GetFileName(d), out _) && Cmdline(d).Contains(id, StringComparison.Ordinal));
        until = DateTime.UtcNow.AddSeconds(60);
        while (QemuRuns() && DateTime.UtcNow < until)
        {
            await Task.Delay(500, ct);
        }
        TestContext.Current.TestOutputHelper?.WriteLine(QemuRuns() ? "the guest runs on, touching none of the dead hosts' pages" : "the guest's QEMU ended");
        Assert.All(LiveGuest.PassesIn(File.ReadAllText(serial)), p => Assert.Equal(0, p.Errors));
    }

    private static string Cmdline(string proc)
    {
        try
        {
            return File.ReadAllText(Path.Combine(proc, "cmdline"));
        }
        catch (IOException)
        {
            return "";
        }
        catch (UnauthorizedAccessException)
        {
            return "";
        }
    }

    /// <summary>The guest g1 (256 MiB, a 96 MiB workload) runs on the source host: started there, in the
    /// source worker's mount namespace, as an operator would start it with `semigrate guest start`.</summary>
    private static async Task StartGuestOnSourceAsync(MigrationRun run, params string[] processes)
    {
        var started = await SemigrateProcess.RunAsync(new Dictionary<string, string>(), ["--target", run.Fleet[run.Source].Pid.ToString(System.Globalization.CultureInfo.InvariantCulture), "--mount", "--"],
            ["guest", "start", "g1", "--guests", Processes.WorkerFleet.IsolatedGuests, "--mem", "256M", .. processes, "--workload", "96"]);
        Assert.True(started.ExitCode == 0, started.Stderr);
    }

    /// <summary>The guest's serial log at the main host, once it runs there.</summary>
    private static string SerialAtMain(MigrationRun run, MigrationRequest request) =>
        Path.Combine(run.StateOf(run.Main), "migrations", request.MigrationId.ToString("N"), "vm", "serial.log");

    private static bool IsRunning(string pid)
    {
        try
        {
            return !System.Diagnostics.Process.GetProcessById(int.Parse(pid.Trim())).HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }
}
