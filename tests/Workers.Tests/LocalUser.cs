using System.Diagnostics;
using System.Globalization;

namespace SEmigrate.Workers.Tests;

/// <summary>A local user of a host who is not root (nobody), with a shell in that host's own mount
/// namespace: what it can do to a file there.</summary>
public static class LocalUser
{
    /// <summary>Tries <paramref name="tries"/> times to read a page of <paramref name="file"/> and as many
    /// times to write a byte into it, as nobody, in the mount namespace of process <paramref name="hostPid"/>;
    /// returns the rows (attack, tries, refused). Root reads it first, so a refusal is not a missing file.</summary>
    public static async Task<IReadOnlyList<(string Attack, int Tries, int Refused)>> TryAsync(string where, int hostPid, string file, int tries)
    {
        Assert.True(await RunAsync(hostPid, asNobody: false, "dd", $"if={file}", "of=/dev/null", "bs=4096", "count=1", "status=none") == 0,
            $"root cannot read {file} at {where}: nothing to try");
        var (reads, writes) = (0, 0);
        for (var i = 0; i < tries; i++)
        {
            reads += await RunAsync(hostPid, asNobody: true, "dd", $"if={file}", "of=/dev/null", "bs=4096", "count=1", "status=none") != 0 ? 1 : 0;
            writes += await RunAsync(hostPid, asNobody: true, "dd", "if=/dev/zero", $"of={file}", "bs=1", "count=1", "seek=4096", "conv=notrunc", "status=none") != 0 ? 1 : 0;
        }
        return [($"a local user reads guest RAM at {where}", tries, reads), ($"a local user writes guest RAM at {where}", tries, writes)];
    }

    private static async Task<int> RunAsync(int hostPid, bool asNobody, params string[] command)
    {
        string[] prefix = ["-t", hostPid.ToString(CultureInfo.InvariantCulture), "-m", "--", .. asNobody ? new[] { "runuser", "-u", "nobody", "--" } : []];
        using var process = Process.Start(new ProcessStartInfo("nsenter", [.. prefix, .. command]) { RedirectStandardError = true, RedirectStandardOutput = true })!;
        await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        return process.ExitCode;
    }
}
