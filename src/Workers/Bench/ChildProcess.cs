using System.Diagnostics;

namespace SEmigrate.Workers.Bench;

/// <summary>A `semigrate` child process (memory server, raw echo server) whose CPU is measured apart.</summary>
public sealed class ChildProcess : IDisposable
{
    private readonly Process process;

    private ChildProcess(Process process) => this.process = process;

    public int Pid => process.Id;

    public static async Task<ChildProcess> StartAsync(string readyLine, CancellationToken ct, params string[] args)
    {
        var start = new ProcessStartInfo(Environment.ProcessPath!, args)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        var process = Process.Start(start) ?? throw new InvalidOperationException("could not start semigrate");
        var stderr = process.StandardError.ReadToEndAsync(ct);
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

    public double CpuSeconds => CpuMeter.Seconds(process.Id);

    public void Dispose()
    {
        if (!process.HasExited)
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit(5000);
        }
        process.Dispose();
    }
}
