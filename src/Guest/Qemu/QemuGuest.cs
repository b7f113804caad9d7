using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SEmigrate.Guest.Qemu;

/// <summary>Boots a small real Linux guest under QEMU (TCG: no KVM here), waits until its init has
/// started the marker processes and printed the ground truth, then stops it and dumps guest memory
/// as ELF through QMP. The kernel and tools come from deploy/guest/guest-kit.sh (cached).</summary>
public static class QemuGuest
{
    public static readonly TimeSpan BootTimeout = TimeSpan.FromMinutes(3);

    /// <summary>"256M", "4G" or a number of MiB.</summary>
    public static int ParseMemoryMiB(string text)
    {
        var t = text.Trim().ToUpperInvariant();
        var (digits, factor) = t.EndsWith('G') ? (t[..^1], 1024) : t.EndsWith('M') ? (t[..^1], 1) : (t, 1);
        if (!int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n < 1 || (long)n * factor is < 64 or > 1024 * 1024)
        {
            throw new FormatException($"'{text}' is not a guest memory size from 64M to 1024G (e.g. 256M, 4G)");
        }
        return n * factor;
    }

    public static async Task<BootedGuest> BootAndDumpAsync(
        GuestSpec spec, string directory, Action<string>? progress = null, CancellationToken ct = default)
    {
        Directory.CreateDirectory(directory);
        progress?.Invoke("preparing kernel and initramfs");
        await PrepareKitAsync(directory, spec, ct);

        var serial = Path.Combine(directory, "serial.log");
        var dump = BootedGuest.DumpIn(directory);
        File.Delete(serial);
        File.Delete(dump);
        // Unix socket paths are limited to 108 bytes: keep it short, outside the (maybe long) directory.
        var socketPath = Path.Combine(Path.GetTempPath(), $"semigrate-qmp-{Guid.NewGuid():N}"[..30] + ".sock");
        var start = new ProcessStartInfo("qemu-system-x86_64",
        [
            "-accel", "tcg", "-m", $"{spec.MemoryMiB}M", "-smp", "1", "-nographic", "-no-reboot", "-nodefaults", "-vga", "none",
            "-kernel", BootedGuest.KernelIn(directory), "-initrd", Path.Combine(directory, "initrd.gz"),
            // no_timer_check: emulated on a busy machine, the kernel's check that the IO-APIC timer ticks can fail
            // and panic the boot (seen in CI); QEMU's timer works, the check is what is too slow.
            "-device", "vmcoreinfo", "-append", "console=ttyS0 panic=-1 quiet loglevel=3 no_timer_check",
            "-serial", $"file:{serial}", "-monitor", "none", "-qmp", $"unix:{socketPath},server=on,wait=off",
        ])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        progress?.Invoke($"booting a {spec.MemoryMiB} MiB guest under QEMU (TCG)");
        using var qemu = Process.Start(start) ?? throw new InvalidOperationException("could not start qemu-system-x86_64");
        var stderr = qemu.StandardError.ReadToEndAsync(ct);
        try
        {
            var clock = Stopwatch.StartNew();
            while (!ReadShared(serial).Contains("SEMIGRATE-READY", StringComparison.Ordinal))
            {
                if (qemu.HasExited)
                {
                    throw new InvalidOperationException(
                        $"QEMU exited with code {qemu.ExitCode} before the guest was ready: {(await stderr).Trim()}\n{Tail(serial)}");
                }
                if (clock.Elapsed > BootTimeout)
                {
                    throw new TimeoutException($"the guest was not ready within {BootTimeout.TotalSeconds:0} s; serial log:\n{Tail(serial)}");
                }
                await Task.Delay(200, ct);
            }
            progress?.Invoke($"guest ready after {clock.Elapsed.TotalSeconds:0.0} s; dumping memory");
            await using (var qmp = await Qmp.ConnectAsync(socketPath, ct))
            {
                await qmp.ExecuteAsync("stop", null, ct);
                await qmp.ExecuteAsync("dump-guest-memory",
                    new JsonObject { ["paging"] = false, ["protocol"] = $"file:{dump}", ["format"] = "elf" }, ct);
                await qmp.ExecuteAsync("quit", null, ct);
            }
            await qemu.WaitForExitAsync(ct).WaitAsync(TimeSpan.FromSeconds(30), ct);
        }
        finally
        {
            if (!qemu.HasExited)
            {
                qemu.Kill(entireProcessTree: true);
            }
            File.Delete(socketPath);
        }

        var truth = GroundTruth.Parse(ReadShared(serial));
        var guest = new BootedGuest(directory, spec, truth);
        await File.WriteAllTextAsync(Path.Combine(directory, "guest.json"),
            JsonSerializer.Serialize(guest, JsonOptions), ct);
        return guest;
    }

    /// <summary>Reopens a guest that <see cref="BootAndDumpAsync"/> wrote.</summary>
    public static BootedGuest Load(string directory)
    {
        var json = Path.Combine(directory, "guest.json");
        if (!File.Exists(json) || !File.Exists(BootedGuest.DumpIn(directory)))
        {
            throw new FileNotFoundException($"{directory} holds no booted guest (guest.json and memory.elf)");
        }
        var guest = JsonSerializer.Deserialize<BootedGuest>(File.ReadAllText(json), JsonOptions)
            ?? throw new InvalidDataException($"{json} is empty");
        return guest with { Directory = directory };
    }

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = false };

    /// <summary>Writes the kernel and an initramfs for <paramref name="spec"/> into <paramref name="directory"/>
    /// (deploy/guest/guest-kit.sh: installs QEMU when missing, caches the kernel).</summary>
    public static async Task PrepareKitAsync(string directory, GuestSpec spec, CancellationToken ct)
    {
        var script = Path.Combine(AppContext.BaseDirectory, "deploy", "guest", "guest-kit.sh");
        var start = new ProcessStartInfo("bash", [script, directory, .. spec.KitArguments])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var kit = Process.Start(start) ?? throw new InvalidOperationException("could not start bash");
        var stdout = kit.StandardOutput.ReadToEndAsync(ct);
        var stderr = kit.StandardError.ReadToEndAsync(ct);
        await kit.WaitForExitAsync(ct);
        if (kit.ExitCode != 0)
        {
            throw new InvalidOperationException($"guest-kit.sh failed (exit {kit.ExitCode}): {(await stderr).Trim()}");
        }
        _ = await stdout;
    }

    internal static string ReadShared(string path)
    {
        if (!File.Exists(path))
        {
            return "";
        }
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    internal static string Tail(string path)
    {
        var lines = ReadShared(path).Split('\n');
        return string.Join('\n', lines.TakeLast(15));
    }
}
