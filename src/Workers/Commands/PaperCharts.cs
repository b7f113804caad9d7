namespace SEmigrate.Workers.Commands;

/// <summary>bench paper's charts (ScottPlot PNGs), one bar per mode each: the workload's run time after
/// the migration, migration time and downtime, MiB paged in and out at the main host, CPU per role.</summary>
public static class PaperCharts
{
    public static IReadOnlyList<string> Write(IReadOnlyList<RunningGuestTrial.Result> results, string folder)
    {
        Directory.CreateDirectory(folder);
        var modes = results.Select(r => r.Mode).ToArray();
        return
        [
            Bars(folder, "run-seconds.png", "Workload run time after migration (s, in the guest)", modes, ("run", results.Select(r => r.RunSeconds))),
            Bars(folder, "migration-seconds.png", "Migration and downtime (s)", modes,
                ("migration", results.Select(r => r.MigrationSeconds)), ("downtime", results.Select(r => r.DowntimeSeconds))),
            Bars(folder, "paging-mib.png", "Paged at the main host (MiB)", modes,
                ("in", results.Select(r => r.PagedInMiB)), ("out", results.Select(r => r.PagedOutMiB))),
            Bars(folder, "cpu-seconds.png", "CPU seconds per role", modes,
                ("source", results.Select(r => r.CpuSeconds.Source)), ("main", results.Select(r => r.CpuSeconds.Main)),
                ("sub-hosts", results.Select(r => r.CpuSeconds.Sub)), ("broker", results.Select(r => r.CpuSeconds.Broker))),
        ];
    }

    /// <summary>Groups of bars, a group per mode and a bar per series.</summary>
    private static string Bars(string folder, string file, string title, string[] modes, params (string Name, IEnumerable<double> Values)[] series)
    {
        var plot = new ScottPlot.Plot();
        var width = 0.8 / series.Length;
        for (var s = 0; s < series.Length; s++)
        {
            var values = series[s].Values.ToArray();
            var bars = plot.Add.Bars(values.Select((v, m) => new ScottPlot.Bar { Position = m + (s - (series.Length - 1) / 2.0) * width, Value = v, Size = width * 0.9 }).ToArray());
            bars.LegendText = series[s].Name;
            bars.Color = ScottPlot.Palette.Default.GetColor(s);
            foreach (var bar in bars.Bars)
            {
                bar.FillColor = ScottPlot.Palette.Default.GetColor(s);
            }
        }
        plot.Axes.Bottom.SetTicks([.. Enumerable.Range(0, modes.Length).Select(m => (double)m)], modes);
        plot.Axes.Margins(bottom: 0);
        plot.Title(title);
        if (series.Length > 1)
        {
            plot.ShowLegend();
        }
        var path = Path.Combine(folder, file);
        plot.SavePng(path, 640, 420);
        return path;
    }
}
