using System.Diagnostics;

namespace SEmigrate.Workers.Processes;

/// <summary>A `semigrate` child process (a host worker, the benchmark's servers) whose CPU is measured
/// apart. Its standard error goes to <c>logPath</c> when given (the demo's --keep), else is collected
/// for the error message if it dies before its ready line.</summary>
public sealed class ChildProcess : IDisposable
{
    private readonly Process process;
    private bool disposed;

    private ChildProcess(Process process) => this.process = process;

    public int Pid => process.Id;

    /// <summary>The `semigrate` executable beside this assembly (the same for the tool and its tests).</summary>
    public static string Executable => Path.Combine(AppContext.BaseDirectory, "semigrate");

    public static Task<ChildProcess> StartAsync(string readyLine, CancellationToken ct, params string[] args) =>
        StartAsync(readyLine, null, null, [], ct, args);

    /// <summary>Starts it and waits for its ready line; <paramref name="environment"/> adds to this process's;
    /// <paramref name="launcher"/>, when not empty, is a command line that runs it (the executable and
    /// <paramref name="args"/> follow it), such as a new namespace.</summary>
    public static async Task<ChildProcess> StartAsync(string readyLine, string? logPath, IReadOnlyDictionary<string, string>? environment,
        IReadOnlyList<string> launcher, CancellationToken ct, params string[] args)
    {
        var start = launcher.Count == 0 ? new ProcessStartInfo(Executable, args) : new ProcessStartInfo(launcher[0], [.. launcher.Skip(1), Executable, .. args]);
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        start.UseShellExecute = false;
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[key] = value;
        }
        var process = Process.Start(start) ?? throw new InvalidOperationException("could not start semigrate");
        var stderr = logPath is null ? process.StandardError.ReadToEndAsync(ct) : CopyAsync(process.StandardError, logPath);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(60));
        while (await process.StandardOutput.ReadLineAsync(timeout.Token) is { } line)
        {
            if (line.Contains(readyLine, StringComparison.Ordinal))
            {
                _ = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
                return new ChildProcess(process);
            }
        }
        await process.WaitForExitAsync(ct);
        throw new InvalidOperationException($"semigrate {string.Join(' ', args)} exited ({process.ExitCode}) before it was ready: {(await stderr).Trim()}");
    }

    private static async Task<string> CopyAsync(StreamReader from, string path)
    {
        await using var log = new StreamWriter(path, append: true) { AutoFlush = true };
        while (await from.ReadLineAsync() is { } line)
        {
            await log.WriteLineAsync(line);
        }
        return $"see {path}";
    }

    public bool HasExited => process.HasExited;

    public double CpuSeconds => process.HasExited ? 0 : CpuMeter.Seconds(process.Id);

    public long PeakResidentBytes => process.HasExited ? 0 : CpuMeter.PeakResidentBytes(process.Id);

    /// <summary>Kills it at once (SIGKILL): the fault tests' dead host.</summary>
    public void Kill()
    {
        if (!process.HasExited)
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit(5000);
        }
    }

    public void Dispose()
    {
        if (disposed)
        {
            return;
        }
        disposed = true;
        Kill();
        process.Dispose();
    }
}
