using System.Diagnostics;
using System.Globalization;

namespace SEmigrate.Workers.Processes;

/// <summary>CPU seconds (user + system) a process has used so far, from /proc/PID/stat.</summary>
public static class CpuMeter
{
    private const double TicksPerSecond = 100; // USER_HZ on Linux x86-64

    public static double Seconds(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            // After "(comm) ": state is field 0, utime field 11, stime field 12.
            return (double.Parse(f[11], CultureInfo.InvariantCulture) + double.Parse(f[12], CultureInfo.InvariantCulture)) / TicksPerSecond;
        }
        catch (IOException)
        {
            return 0;
        }
    }

    public static double Self() => Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;

    /// <summary>The most resident memory the process has had (VmHWM in /proc/PID/status), in bytes.</summary>
    public static long PeakResidentBytes(int pid)
    {
        try
        {
            var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
            return line is null ? 0 : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException)
        {
            return 0;
        }
    }

    /// <summary>The RabbitMQ node (beam.smp), or 0 when there is none to see.</summary>
    public static int BrokerPid()
    {
        foreach (var dir in Directory.GetDirectories("/proc"))
        {
            if (int.TryParse(Path.GetFileName(dir), out var pid))
            {
                try
                {
                    if (File.ReadAllText(Path.Combine(dir, "comm")).Trim() == "beam.smp")
                    {
                        return pid;
                    }
                }
                catch (IOException)
                {
                }
                catch (UnauthorizedAccessException)
                {
                }
            }
        }
        return 0;
    }
}
