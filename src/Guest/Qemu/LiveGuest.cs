using System.Diagnostics;
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
    private readonly string socketPath;
    private readonly Task<string> stderr;

    private LiveGuest(Process qemu, Qmp qmp, string socketPath, string serialPath, Task<string> stderr)
    {
        (this.qemu, this.qmp, this.socketPath, SerialPath, this.stderr) = (qemu, qmp, socketPath, serialPath, stderr);
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
        var start = new ProcessStartInfo("qemu-system-x86_64",
        [
            "-accel", "tcg", "-m", $"{memoryMiB}M", "-smp", "1", "-nographic", "-no-reboot", "-nodefaults", "-vga", "none",
            "-machine", "pc,memory-backend=ram",
            "-object", $"memory-backend-file,id=ram,size={memoryMiB}M,mem-path={ramPath},share=on",
            "-kernel", BootedGuest.KernelIn(kitDirectory), "-initrd", Path.Combine(kitDirectory, "initrd.gz"),
            "-device", "vmcoreinfo", "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
            "-serial", $"file:{serialPath}", "-monitor", "none", "-qmp", $"unix:{socketPath},server=on,wait=off",
            .. incoming ? new[] { "-incoming", "defer" } : [],
        ])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        var qemu = Process.Start(start) ?? throw new InvalidOperationException("could not start qemu-system-x86_64");
        var stderr = qemu.StandardError.ReadToEndAsync(CancellationToken.None);
        try
        {
            var until = DateTime.UtcNow.AddSeconds(30);
            while (!File.Exists(socketPath))
            {
                if (qemu.HasExited || DateTime.UtcNow > until)
                {
                    throw new InvalidOperationException($"QEMU did not start (exit {(qemu.HasExited ? qemu.ExitCode : -1)}): {(qemu.HasExited ? (await stderr).Trim() : "no QMP socket")}");
                }
                await Task.Delay(50, ct);
            }
            var qmp = await Qmp.ConnectAsync(socketPath, ct);
            return new LiveGuest(qemu, qmp, socketPath, serialPath, stderr);
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
    public IReadOnlyList<WorkloadPass> Passes => [.. WorkloadLine().Matches(Serial).Select(m => new WorkloadPass(
        long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), long.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture),
        m.Groups[3].Value, long.Parse(m.Groups[4].Value, System.Globalization.CultureInfo.InvariantCulture)))];

    public Task PauseAsync(CancellationToken ct) => qmp.ExecuteAsync("stop", null, ct);

    public Task ContinueAsync(CancellationToken ct) => qmp.ExecuteAsync("cont", null, ct);

    /// <summary>Writes the paused guest's device state, without RAM, to <paramref name="path"/>.</summary>
    public async Task SaveDeviceStateAsync(string path, CancellationToken ct)
    {
        await IgnoreSharedRamAsync(ct);
        await qmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = $"exec:cat > '{path}'" }, ct);
        await MigrationDoneAsync(ct);
    }

    /// <summary>Loads the device state into a QEMU started with <c>incoming</c>; the guest stays paused
    /// until <see cref="ContinueAsync"/>.</summary>
    public async Task LoadDeviceStateAsync(string path, CancellationToken ct)
    {
        await IgnoreSharedRamAsync(ct);
        await qmp.ExecuteAsync("migrate-incoming", new JsonObject { ["uri"] = $"exec:cat '{path}'" }, ct);
        var until = DateTime.UtcNow.AddSeconds(60);
        while ((await qmp.ExecuteAsync("query-status", null, ct))?["status"]?.GetValue<string>() is "inmigrate")
        {
            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException("the device state did not load within 60 s");
            }
            await Task.Delay(20, ct);
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
            await Task.Delay(20, ct);
        }
    }

    /// <summary>Ends QEMU (quit, or kill if it does not answer).</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!qemu.HasExited)
            {
                await qmp.ExecuteAsync("quit", null, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));
                await qemu.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            }
        }
#pragma warning disable CA1031 // ending it anyway
        catch (Exception)
#pragma warning restore CA1031
        {
        }
        if (!qemu.HasExited)
        {
            qemu.Kill(entireProcessTree: true);
        }
        await qmp.DisposeAsync();
        qemu.Dispose();
        File.Delete(socketPath);
    }

    [GeneratedRegex(@"WORKLOAD pass=(\d+) mib=\d+ errors=(\d+) checksum=([0-9a-f]+) ms=(\d+)")]
    private static partial Regex WorkloadLine();
}

/// <summary>One pass of the guest's workload: pages found wrong so far, a checksum, the pass's time.</summary>
public sealed record WorkloadPass(long Pass, long Errors, string Checksum, long Milliseconds);
