using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace SEmigrate.Guest.Qemu;

/// <summary>A running guest under QEMU (TCG) whose RAM is a file (<c>memory-backend-file,share=on</c>):
/// at the source a file of the host's own, read directly by introspection; at the main host a file its
/// pager serves over FUSE. The VM core (vCPU registers, devices) moves as QEMU's own device state
/// without RAM (<c>x-ignore-shared</c>, a few hundred KB), into a QEMU started with
/// <c>-incoming defer</c> on the RAM file that holds the same memory. The serial console goes to a log,
/// where the guest's workload reports its passes.</summary>
public sealed partial class LiveGuest : IAsyncDisposable
{
    private readonly Process qemu;
    private readonly Qmp qmp;
    private readonly string? socketPath;
    private readonly Task<string> stderr;
    private bool detached;
    private bool borrowed;
    private int disposed;

    /// <summary><paramref name="socketPath"/>: a socket of this object's own, removed with it (null for
    /// a guest that lives on its own, see <see cref="StartInFolderAsync"/>).</summary>
    private LiveGuest(Process qemu, Qmp qmp, string? socketPath, string serialPath, Task<string> stderr)
    {
        (this.qemu, this.qmp, this.socketPath, SerialPath, this.stderr) = (qemu, qmp, socketPath, serialPath, stderr);
    }

    /// <summary>Where a guest that lives on its own keeps itself: its kit (vmlinuz, initrd.gz), its RAM,
    /// serial log, QMP socket, QEMU's pid, and live.json (its memory size).</summary>
    public static string RamIn(string folder) => Path.Combine(folder, "ram");

    public static string SocketIn(string folder) => Path.Combine(folder, "qmp.sock");

    public static bool IsLive(string folder) => File.Exists(Path.Combine(folder, "live.json"));

    /// <summary>Whether the QEMU of the guest living in <paramref name="folder"/> runs (a guest that left
    /// the host, or was stopped, keeps its folder).</summary>
    public static bool IsRunning(string folder)
    {
        var pidFile = Path.Combine(folder, "qemu.pid");
        if (!IsLive(folder) || !File.Exists(pidFile) || !int.TryParse(File.ReadAllText(pidFile).Trim(), out var pid))
        {
            return false;
        }
        try
        {
            using var qemu = Process.GetProcessById(pid);
            return !qemu.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    /// <summary>The memory size of the guest living in <paramref name="folder"/>.</summary>
    public static int MemoryMiBIn(string folder) =>
        System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "live.json"))).RootElement.GetProperty("memoryMiB").GetInt32();

    /// <summary>Boots a guest that outlives this process (QEMU daemonised) in <paramref name="folder"/>,
    /// which holds its kit; returns once its init is ready. <see cref="AttachAsync"/> controls it later,
    /// from any process that sees the folder.</summary>
    public static async Task StartInFolderAsync(string folder, int memoryMiB, CancellationToken ct)
    {
        if (SocketIn(folder).Length > 100)
        {
            throw new ArgumentException($"{folder} is too long a path for QEMU's control socket (unix sockets take 108 bytes)");
        }
        File.Delete(Path.Combine(folder, "serial.log"));
        PrivateByDefault.Folder(folder); // its RAM in the clear: root's alone, also in a folder made before
        File.Delete(RamIn(folder)); // a fresh guest's RAM, made 0600 by QEMU: an older file may be open to others already
        await File.WriteAllTextAsync(Path.Combine(folder, "live.json"), System.Text.Json.JsonSerializer.Serialize(new { memoryMiB }), ct);
        var start = Arguments(folder, memoryMiB, RamIn(folder), Path.Combine(folder, "serial.log"), SocketIn(folder), incoming: false);
        start.ArgumentList.Add("-daemonize");
        start.ArgumentList.Add("-pidfile");
        start.ArgumentList.Add(Path.Combine(folder, "qemu.pid"));
        using (var launcher = Process.Start(start) ?? throw new InvalidOperationException("could not start qemu-system-x86_64"))
        {
            var stderr = launcher.StandardError.ReadToEndAsync(ct);
            await launcher.WaitForExitAsync(ct);
            if (launcher.ExitCode != 0)
            {
                throw new InvalidOperationException($"QEMU did not start (exit {launcher.ExitCode}): {(await stderr).Trim()}");
            }
        }
        await using var guest = await AttachAsync(folder, ct);
        await guest.WaitForAsync("SEMIGRATE-READY", QemuGuest.BootTimeout, ct);
    }

    /// <summary>Takes control of the guest living in <paramref name="folder"/>; disposing ends the
    /// control connection, not the guest, unless <see cref="QuitAsync"/> ends it.</summary>
    public static async Task<LiveGuest> AttachAsync(string folder, CancellationToken ct)
    {
        var pid = int.Parse(File.ReadAllText(Path.Combine(folder, "qemu.pid")).Trim(), System.Globalization.CultureInfo.InvariantCulture);
        var qemu = Process.GetProcessById(pid);
        var qmp = await Qmp.ConnectAsync(SocketIn(folder), ct);
        return new LiveGuest(qemu, qmp, null, Path.Combine(folder, "serial.log"), Task.FromResult("(daemonised: see its serial log)")) { detached = true };
    }

    /// <summary>This guest's control for a while, on the same QMP connection (QEMU takes one client): disposing
    /// the loan does nothing, and only the owner ends the guest.</summary>
    public LiveGuest Borrowed() => new(qemu, qmp, null, SerialPath, stderr) { detached = true, borrowed = true };

    /// <summary>Ends the guest.</summary>
    public async Task QuitAsync()
    {
        if (borrowed)
        {
            throw new InvalidOperationException("a borrowed guest is ended by its owner");
        }
        detached = false;
        await DisposeAsync();
    }

    public string SerialPath { get; }

    public int Pid => qemu.Id;

    public bool HasExited => qemu.HasExited;

    /// <summary>Starts QEMU on the kit in <paramref name="kitDirectory"/> (vmlinuz, initrd.gz) with
    /// <paramref name="memoryMiB"/> of RAM in <paramref name="ramPath"/> (created if missing). With
    /// <paramref name="incoming"/> the guest does not boot: it waits for <see cref="LoadDeviceStateAsync"/>.</summary>
    public static async Task<LiveGuest> StartAsync(string kitDirectory, int memoryMiB, string ramPath, string serialPath, bool incoming, CancellationToken ct)
    {
        // Unix socket paths are limited to 108 bytes: keep it short, outside the (maybe long) directory.
        var socketPath = Path.Combine(Path.GetTempPath(), $"semigrate-qmp-{Guid.NewGuid():N}"[..30] + ".sock");
        var start = Arguments(kitDirectory, memoryMiB, ramPath, serialPath, socketPath, incoming);
        var qemu = HugePageAdvice.StartWithout(start); // faults read what readahead says, not 2 MiB each
        var stderr = qemu.StandardError.ReadToEndAsync(CancellationToken.None);
        try
        {
            var until = DateTime.UtcNow.AddSeconds(30);
            while (true)
            {
                try
                {
                    var qmp = await Qmp.ConnectAsync(socketPath, ct);
                    return new LiveGuest(qemu, qmp, socketPath, serialPath, stderr);
                }
                catch (SocketException e) when (e.SocketErrorCode is SocketError.AddressNotAvailable or SocketError.ConnectionRefused)
                {
                    // No socket yet, or QEMU has bound it but does not listen yet: it is still starting.
                }
                if (qemu.HasExited || DateTime.UtcNow > until)
                {
                    throw new InvalidOperationException($"QEMU did not start (exit {(qemu.HasExited ? qemu.ExitCode : -1)}): {(qemu.HasExited ? (await stderr).Trim() : "no QMP socket")}");
                }
                await Task.Delay(10, ct); // the guest's downtime runs
            }
        }
        catch
        {
            if (!qemu.HasExited)
            {
                qemu.Kill(entireProcessTree: true);
            }
            qemu.Dispose();
            throw;
        }
    }

    /// <summary>The one QEMU command line: the same at the source and at the main host (device state
    /// loads only into a machine made alike), but for -incoming.</summary>
    private static ProcessStartInfo Arguments(string kitDirectory, int memoryMiB, string ramPath, string serialPath, string socketPath, bool incoming) =>
        new("qemu-system-x86_64",
        [
            // -display none, not -nographic: a daemonised QEMU refuses -nographic.
            "-accel", "tcg", "-m", $"{memoryMiB}M", "-smp", "1", "-display", "none", "-no-reboot", "-nodefaults", "-vga", "none",
            // dump-guest-core=off: a core dump of QEMU holds none of the guest's RAM.
            "-machine", "pc,memory-backend=ram,dump-guest-core=off",
            "-object", $"memory-backend-file,id=ram,size={memoryMiB}M,mem-path={ramPath},share=on",
            "-kernel", BootedGuest.KernelIn(kitDirectory), "-initrd", Path.Combine(kitDirectory, "initrd.gz"),
            // no_timer_check: emulated on a busy machine, the kernel's check that the IO-APIC timer ticks can fail
            // and panic the boot (seen in CI); QEMU's timer works, the check is what is too slow.
            "-device", "vmcoreinfo", "-append", "console=ttyS0 panic=-1 quiet loglevel=3 no_timer_check",
            "-serial", $"file:{serialPath}", "-monitor", "none", "-qmp", $"unix:{socketPath},server=on,wait=off",
            // QEMU's own seccomp filter: no obsolete system calls, no resource control. Not elevateprivileges=deny
            // (nor =children): it forbids setsid, which -daemonize needs (QEMU 7.2 exits 1), and the setuid of -runas.
            "-sandbox", "on,obsolete=deny,resourcecontrol=deny",
            "-runas", QemuUser.Required(),
            .. incoming ? new[] { "-incoming", "defer" } : [],
        ])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };

    /// <summary>The serial console so far.</summary>
    public string Serial => QemuGuest.ReadShared(SerialPath);

    /// <summary>Waits until the serial log shows <paramref name="text"/>.</summary>
    public async Task WaitForAsync(string text, TimeSpan timeout, CancellationToken ct)
    {
        var until = DateTime.UtcNow + timeout;
        while (!Serial.Contains(text, StringComparison.Ordinal))
        {
            if (qemu.HasExited)
            {
                throw new InvalidOperationException($"QEMU exited ({qemu.ExitCode}) before '{text}': {(await stderr).Trim()}\n{QemuGuest.Tail(SerialPath)}");
            }
            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException($"'{text}' did not show within {timeout.TotalSeconds:0} s; serial log:\n{QemuGuest.Tail(SerialPath)}");
            }
            await Task.Delay(100, ct);
        }
    }

    /// <summary>The workload's reports so far, in order.</summary>
    public IReadOnlyList<WorkloadPass> Passes => PassesIn(Serial);

    /// <summary>The workload's reports in a serial log.</summary>
    public static IReadOnlyList<WorkloadPass> PassesIn(string serial) => [.. WorkloadLine().Matches(serial).Select(m => new WorkloadPass(
        long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), long.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture),
        m.Groups[3].Value, long.Parse(m.Groups[4].Value, System.Globalization.CultureInfo.InvariantCulture)))];

    public Task PauseAsync(CancellationToken ct) => qmp.ExecuteAsync("stop", null, ct);

    public Task ContinueAsync(CancellationToken ct) => qmp.ExecuteAsync("cont", null, ct);

    /// <summary>Writes the paused guest's device state, without RAM, to <paramref name="path"/>.</summary>
    public async Task SaveDeviceStateAsync(string path, CancellationToken ct)
    {
        await IgnoreSharedRamAsync(ct);
        // Opened here and handed over: QEMU's user may not open anything in this folder.
        using (var file = new FileStream(path, new FileStreamOptions
               {
                   Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
               }))
        {
            await qmp.SendFileAsync(DeviceStateFd, file.SafeFileHandle, ct);
        }
        await qmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = $"fd:{DeviceStateFd}" }, ct);
        await MigrationDoneAsync(ct);
    }

    private const string DeviceStateFd = "device-state";

    /// <summary>Loads the device state into a QEMU started with <c>incoming</c>; the guest stays paused
    /// until <see cref="ContinueAsync"/>.</summary>
    public async Task LoadDeviceStateAsync(string path, CancellationToken ct)
    {
        await IgnoreSharedRamAsync(ct);
        using (var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read))
        {
            await qmp.SendFileAsync(DeviceStateFd, file, ct);
        }
        await qmp.ExecuteAsync("migrate-incoming", new JsonObject { ["uri"] = $"fd:{DeviceStateFd}" }, ct);
        var until = DateTime.UtcNow.AddSeconds(60);
        while ((await qmp.ExecuteAsync("query-status", null, ct))?["status"]?.GetValue<string>() is "inmigrate")
        {
            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException("the device state did not load within 60 s");
            }
            await Task.Delay(5, ct);
        }
    }

    private Task IgnoreSharedRamAsync(CancellationToken ct) => qmp.ExecuteAsync("migrate-set-capabilities", new JsonObject
    {
        ["capabilities"] = new JsonArray(new JsonObject { ["capability"] = "x-ignore-shared", ["state"] = true }),
    }, ct);

    private async Task MigrationDoneAsync(CancellationToken ct)
    {
        var until = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            var status = (await qmp.ExecuteAsync("query-migrate", null, ct))?["status"]?.GetValue<string>();
            switch (status)
            {
                case "completed":
                    return;
                case "failed" or "cancelled":
                    throw new InvalidOperationException($"saving the device state {status}");
            }
            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException($"saving the device state did not complete within 60 s (status {status})");
            }
            await Task.Delay(5, ct);
        }
    }

    /// <summary>Ends QEMU (quit, or kill if it does not answer), unless detached: then only the control connection.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) == 1 || borrowed)
        {
            return; // after QuitAsync, a using's dispose finds nothing left to do; a loan owns nothing
        }
        if (detached)
        {
            await qmp.DisposeAsync();
            qemu.Dispose();
            return;
        }
        // /proc, not Process.HasExited: an attached QEMU is no child of this process, and Process
        // answers for it only while it lives.
        var pid = qemu.Id;
        bool Exited() => !Directory.Exists($"/proc/{pid}");
        try
        {
            if (!Exited())
            {
                await qmp.ExecuteAsync("quit", null, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));
                for (var until = DateTime.UtcNow.AddSeconds(10); !Exited() && DateTime.UtcNow < until;)
                {
                    await Task.Delay(50);
                }
            }
        }
#pragma warning disable CA1031 // ending it anyway
        catch (Exception)
#pragma warning restore CA1031
        {
        }
        try
        {
            if (!Exited())
            {
                qemu.Kill(entireProcessTree: true);
            }
        }
        catch (InvalidOperationException)
        {
            // it ended meanwhile
        }
        await qmp.DisposeAsync();
        qemu.Dispose();
        if (socketPath is not null)
        {
            File.Delete(socketPath);
        }
    }

    [GeneratedRegex(@"WORKLOAD pass=(\d+) mib=\d+ errors=(\d+) checksum=([0-9a-f]+) ms=(\d+)")]
    private static partial Regex WorkloadLine();
}

/// <summary>One pass of the guest's workload: pages found wrong so far, a checksum, the pass's time.</summary>
public sealed record WorkloadPass(long Pass, long Errors, string Checksum, long Milliseconds);
